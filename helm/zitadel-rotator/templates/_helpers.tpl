{{/* Names and labels. */}}
{{- define "zitadel-rotator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "zitadel-rotator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "zitadel-rotator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zitadel-rotator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "zitadel-rotator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "zitadel-rotator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "zitadel-rotator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "zitadel-rotator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "zitadel-rotator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "zitadel-rotator.leaseName" -}}
{{- default (include "zitadel-rotator.fullname" .) .Values.daemon.ha.leaseName }}
{{- end }}

{{/* Feature switches, as "true" or "". */}}
{{- define "zitadel-rotator.daemonMode" -}}
{{- if eq .Values.mode "deployment" }}true{{ end }}
{{- end }}

{{- define "zitadel-rotator.haEnabled" -}}
{{- if and (include "zitadel-rotator.daemonMode" .) .Values.daemon.ha.enabled }}true{{ end }}
{{- end }}

{{/* The Kubernetes Lease backend talks to the API server: it needs RBAC and a token. */}}
{{- define "zitadel-rotator.kubernetesLease" -}}
{{- if and (include "zitadel-rotator.haEnabled" .) (eq .Values.daemon.ha.backend "kubernetes") }}true{{ end }}
{{- end }}

{{- define "zitadel-rotator.vaultKubernetesAuth" -}}
{{- if eq .Values.vault.auth.method "kubernetes" }}true{{ end }}
{{- end }}

{{/* The API-server token (default audience) at the standard in-cluster path:
     for the Lease client, and for Vault's Kubernetes auth unless that has its
     own audience. */}}
{{- define "zitadel-rotator.needsKubeToken" -}}
{{- if or (include "zitadel-rotator.kubernetesLease" .) (and (include "zitadel-rotator.vaultKubernetesAuth" .) (not .Values.vault.auth.kubernetes.audience)) }}true{{ end }}
{{- end }}

{{- define "zitadel-rotator.needsVaultJwt" -}}
{{- if and (include "zitadel-rotator.vaultKubernetesAuth" .) .Values.vault.auth.kubernetes.audience }}true{{ end }}
{{- end }}

{{/* Paths inside the container. */}}
{{- define "zitadel-rotator.configPath" -}}/etc/zitadel-rotator/config.yaml{{- end }}
{{- define "zitadel-rotator.keyPath" -}}/var/run/zitadel-rotator/key/key.json{{- end }}
{{- define "zitadel-rotator.zitadelCaPath" -}}/etc/zitadel-rotator/zitadel-ca/ca.crt{{- end }}
{{- define "zitadel-rotator.vaultCaPath" -}}/etc/zitadel-rotator/vault-ca/ca.crt{{- end }}
{{- define "zitadel-rotator.vaultTokenPath" -}}/var/run/zitadel-rotator/vault-token/token{{- end }}
{{- define "zitadel-rotator.approleSecretIdPath" -}}/var/run/zitadel-rotator/vault-approle/secret-id{{- end }}
{{- define "zitadel-rotator.kubeTokenDir" -}}/var/run/secrets/kubernetes.io/serviceaccount{{- end }}
{{- define "zitadel-rotator.vaultJwtPath" -}}/var/run/zitadel-rotator/vault-jwt/token{{- end }}

{{/* A duration in the rotator's syntax (30d, 12h, 90m, 45s, 1d12h) in seconds,
     for alert expressions. */}}
{{- define "zitadel-rotator.durationSeconds" -}}
{{- $d := toString . }}
{{- if or (not $d) (not (regexMatch "^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$" $d)) }}
{{- fail (printf "duration %q: use 30d, 12h, 90m, 45s or combined largest first (1d12h)" $d) }}
{{- end }}
{{- $total := 0 }}
{{- range $part := regexFindAll "[0-9]+[dhms]" $d -1 }}
{{- $unit := get (dict "s" 1 "m" 60 "h" 3600 "d" 86400) (regexFind "[dhms]$" $part) }}
{{- $total = add $total (mul (int (trimSuffix (regexFind "[dhms]$" $part) $part)) $unit) }}
{{- end }}
{{- $total }}
{{- end }}

{{/* Cross-field checks the JSON schema cannot express clearly. */}}
{{- define "zitadel-rotator.validate" -}}
{{- $creds := .Values.zitadel.credentials }}
{{- if and $creds.existingSecret $creds.vaultPath }}
{{- fail "zitadel.credentials: set either existingSecret or vaultPath, not both" }}
{{- end }}
{{- if not (or $creds.existingSecret $creds.vaultPath) }}
{{- fail "zitadel.credentials: the rotator's own ZITADEL key is required: set existingSecret (a Secret with the key JSON) or vaultPath" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.daemon.ha.enabled) (include "zitadel-rotator.daemonMode" .) }}
{{- fail "replicaCount > 1 needs daemon.ha.enabled: true (one active replica, the others on standby)" }}
{{- end }}
{{- if not .Values.targets }}
{{- fail "targets: at least one target is required (see the targets section of values.yaml)" }}
{{- end }}
{{- if and .Values.zitadel.tls.ca.configMap .Values.zitadel.tls.ca.secret }}
{{- fail "zitadel.tls.ca: set configMap or secret, not both" }}
{{- end }}
{{- if and .Values.vault.ca.configMap .Values.vault.ca.secret }}
{{- fail "vault.ca: set configMap or secret, not both" }}
{{- end }}
{{- if and .Values.zitadel.tls.insecure (or .Values.zitadel.tls.ca.configMap .Values.zitadel.tls.ca.secret) }}
{{- fail "zitadel.tls: insecure and a CA bundle exclude each other" }}
{{- end }}
{{- if eq .Values.vault.auth.method "token" }}
{{- $_ := required "vault.auth.token.existingSecret is required for vault.auth.method token" .Values.vault.auth.token.existingSecret }}
{{- end }}
{{- if eq .Values.vault.auth.method "approle" }}
{{- $_ := required "vault.auth.approle.roleId is required for vault.auth.method approle" .Values.vault.auth.approle.roleId }}
{{- $_ := required "vault.auth.approle.secretIdSecret is required for vault.auth.method approle" .Values.vault.auth.approle.secretIdSecret }}
{{- end }}
{{- $names := dict }}
{{- range .Values.targets }}
{{- if hasKey $names .name }}
{{- fail (printf "targets: the name %q is used twice" .name) }}
{{- end }}
{{- $_ := set $names .name true }}
{{- end }}
{{- end }}

{{/* A CA bundle volume from a ConfigMap or a Secret, or nothing. */}}
{{- define "zitadel-rotator.caVolume" -}}
{{- $ca := .ca -}}
{{- if $ca.configMap -}}
- name: {{ .name }}
  configMap:
    name: {{ $ca.configMap }}
    items:
      - {key: {{ $ca.key | quote }}, path: ca.crt}
{{- else if $ca.secret -}}
- name: {{ .name }}
  secret:
    secretName: {{ $ca.secret }}
    defaultMode: 0440
    items:
      - {key: {{ $ca.key | quote }}, path: ca.crt}
{{- end }}
{{- end }}

{{/* The pod spec shared by the Deployment, the CronJob and the test hook.
     Arguments: ctx (the root context), args (the container's arguments),
     daemon (bool: ports and probes). */}}
{{- define "zitadel-rotator.podSpec" -}}
{{- $ctx := .ctx }}
{{- $v := $ctx.Values -}}
serviceAccountName: {{ include "zitadel-rotator.serviceAccountName" $ctx }}
# The token is mounted only where needed, through the projected volume below.
automountServiceAccountToken: false
enableServiceLinks: false
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
{{- if .daemon }}
terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
{{- end }}
containers:
  - name: rotator
    image: {{ include "zitadel-rotator.image" $ctx | quote }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    args:
      {{- toYaml .args | nindent 6 }}
    env:
      - name: POD_NAME
        valueFrom: {fieldRef: {fieldPath: metadata.name}}
      - name: POD_NAMESPACE
        valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
      # the audit events' actor (config/audit.md)
      - name: POD_SERVICE_ACCOUNT
        valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}
      # glibc malloc, as in the image: memory per target (README, "Operating it");
      # an entry of extraEnv with the same name comes later and wins
      - name: MALLOC_ARENA_MAX
        value: "2"
      - name: MALLOC_MMAP_THRESHOLD_
        value: "131072"
      {{- with $v.notify.webhookUrlSecret.name }}
      # Referenced by the config as ${ROTATOR_WEBHOOK_URL}.
      - name: ROTATOR_WEBHOOK_URL
        valueFrom:
          secretKeyRef: {name: {{ . }}, key: {{ $v.notify.webhookUrlSecret.key | quote }}}
      {{- end }}
      {{- with $v.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- if .daemon }}
    ports:
      - name: metrics
        containerPort: {{ $v.daemon.port }}
        protocol: TCP
    startupProbe:
      httpGet: {path: /healthz, port: metrics}
      {{- toYaml $v.probes.startup | nindent 6 }}
    livenessProbe:
      httpGet: {path: /healthz, port: metrics}
      {{- toYaml $v.probes.liveness | nindent 6 }}
    readinessProbe:
      httpGet: {path: /readyz, port: metrics}
      {{- toYaml $v.probes.readiness | nindent 6 }}
    {{- end }}
    resources:
      {{- toYaml $v.resources | nindent 6 }}
    securityContext:
      {{- toYaml $v.securityContext | nindent 6 }}
    volumeMounts:
      - name: config
        mountPath: /etc/zitadel-rotator/config.yaml
        subPath: config.yaml
        readOnly: true
      - name: tmp
        mountPath: /tmp
      {{- if $v.zitadel.credentials.existingSecret }}
      - name: zitadel-key
        mountPath: /var/run/zitadel-rotator/key
        readOnly: true
      {{- end }}
      {{- if or $v.zitadel.tls.ca.configMap $v.zitadel.tls.ca.secret }}
      - name: zitadel-ca
        mountPath: /etc/zitadel-rotator/zitadel-ca
        readOnly: true
      {{- end }}
      {{- if or $v.vault.ca.configMap $v.vault.ca.secret }}
      - name: vault-ca
        mountPath: /etc/zitadel-rotator/vault-ca
        readOnly: true
      {{- end }}
      {{- if eq $v.vault.auth.method "token" }}
      - name: vault-token
        mountPath: /var/run/zitadel-rotator/vault-token
        readOnly: true
      {{- end }}
      {{- if eq $v.vault.auth.method "approle" }}
      - name: vault-approle
        mountPath: /var/run/zitadel-rotator/vault-approle
        readOnly: true
      {{- end }}
      {{- if include "zitadel-rotator.needsKubeToken" $ctx }}
      - name: kube-api-access
        mountPath: {{ include "zitadel-rotator.kubeTokenDir" $ctx }}
        readOnly: true
      {{- end }}
      {{- if include "zitadel-rotator.needsVaultJwt" $ctx }}
      - name: vault-jwt
        mountPath: /var/run/zitadel-rotator/vault-jwt
        readOnly: true
      {{- end }}
      {{- with $v.extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  - name: config
    configMap:
      name: {{ include "zitadel-rotator.fullname" $ctx }}
  - name: tmp
    emptyDir:
      sizeLimit: {{ $v.tmpSizeLimit }}
  {{- with $v.zitadel.credentials.existingSecret }}
  - name: zitadel-key
    secret:
      secretName: {{ . }}
      defaultMode: 0440
      items:
        - {key: {{ $v.zitadel.credentials.key | quote }}, path: key.json}
  {{- end }}
  {{- with include "zitadel-rotator.caVolume" (dict "name" "zitadel-ca" "ca" $v.zitadel.tls.ca) }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- with include "zitadel-rotator.caVolume" (dict "name" "vault-ca" "ca" $v.vault.ca) }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- if eq $v.vault.auth.method "token" }}
  - name: vault-token
    secret:
      secretName: {{ $v.vault.auth.token.existingSecret }}
      defaultMode: 0440
      items:
        - {key: {{ $v.vault.auth.token.key | quote }}, path: token}
  {{- end }}
  {{- if eq $v.vault.auth.method "approle" }}
  - name: vault-approle
    secret:
      secretName: {{ $v.vault.auth.approle.secretIdSecret }}
      defaultMode: 0440
      items:
        - {key: {{ $v.vault.auth.approle.secretIdKey | quote }}, path: secret-id}
  {{- end }}
  {{- if include "zitadel-rotator.needsKubeToken" $ctx }}
  # What automountServiceAccountToken would mount, but only when the Lease
  # client or Vault's Kubernetes auth needs it.
  - name: kube-api-access
    projected:
      defaultMode: 0440
      sources:
        - serviceAccountToken:
            path: token
            expirationSeconds: {{ $v.vault.auth.kubernetes.tokenExpirationSeconds }}
        - configMap:
            name: kube-root-ca.crt
            items:
              - {key: ca.crt, path: ca.crt}
        - downwardAPI:
            items:
              - path: namespace
                fieldRef: {fieldPath: metadata.namespace}
  {{- end }}
  {{- if include "zitadel-rotator.needsVaultJwt" $ctx }}
  # A token only Vault accepts (its own audience), not the API server.
  - name: vault-jwt
    projected:
      defaultMode: 0440
      sources:
        - serviceAccountToken:
            path: token
            audience: {{ $v.vault.auth.kubernetes.audience | quote }}
            expirationSeconds: {{ $v.vault.auth.kubernetes.tokenExpirationSeconds }}
  {{- end }}
  {{- with $v.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- tpl (toYaml .) $ctx | nindent 2 }}
{{- end }}
{{- end }}

{{/* checkov skips for the pod-bearing objects (annotation entries), each with
     the reason the check does not apply to this release's values. */}}
{{- define "zitadel-rotator.checkovSkipEntries" -}}
{{- $skips := list }}
{{- if not .Values.image.digest }}
{{- $skips = append $skips "CKV_K8S_43=image.digest is empty: the image is pinned by the tag (the chart's appVersion unless image.tag is set); set image.digest to pin it by content" }}
{{- if ne .Values.image.pullPolicy "Always" }}
{{- $skips = append $skips "CKV_K8S_15=a tag-pinned release image with pullPolicy IfNotPresent (the values' choice); a digest or pullPolicy Always lifts this skip" }}
{{- end }}
{{- end }}
{{- if .Values.notify.webhookUrlSecret.name }}
{{- $skips = append $skips "CKV_K8S_35=the webhook URL reaches the rotator as an environment variable because its config file can only reference secrets as ${VAR}; the Secret itself stays a Secret" }}
{{- end }}
{{- if not .Values.networkPolicy.enabled }}
{{- $skips = append $skips "CKV2_K8S_6=networkPolicy.enabled is false: egress peers (ZITADEL, Vault, DNS) are cluster-specific, so the values leave isolation to the cluster's own policies; set networkPolicy.enabled to render one" }}
{{- end }}
{{- if .testPod }}
{{- $skips = append $skips "CKV_K8S_8=one-shot helm test pod: rotator validate exits at once, nothing to probe" }}
{{- $skips = append $skips "CKV_K8S_9=one-shot helm test pod: rotator validate exits at once, nothing to probe" }}
{{- end }}
{{- range $i, $s := $skips }}
checkov.io/skip{{ add1 $i }}: {{ $s | quote }}
{{- end }}
{{- end }}

{{- define "zitadel-rotator.checkovSkips" -}}
{{- with include "zitadel-rotator.checkovSkipEntries" (dict "Values" .Values "testPod" false) | trim }}
annotations:
  {{- . | nindent 2 }}
{{- end }}
{{- end }}
