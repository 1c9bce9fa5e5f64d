# Vault / OpenBao policy for zitadel-rotator: exactly what it uses, nothing more.
#
# Written for the defaults; change the three prefixes if your configuration differs:
#   secret/           vault.mount (a KV v2 engine)
#   zitadel-rotator/  vault.state_prefix: rotation state and intents, and the HA
#                     lease (daemon.lease: vault, at <state_prefix>/leader)
#   zitadel/          the targets' vault_path (default zitadel/<target name>) and
#                     the rotator's own key (zitadel.credentials.vault_path)
#
# The token does not need Vault's `default` policy: looking itself up and
# renewing itself are granted below.  Load it with
#   vault policy write zitadel-rotator config/vault/rotator.hcl
# and give the rotator's role or token this policy alone
# (e.g. `vault token create -policy=zitadel-rotator -no-default-policy`).

# Rotation state, intents and the HA lease.  Writes are check-and-set
# (data create/update); custom metadata is written on the metadata path;
# destroy removes the versions that held a pending private key.
path "secret/data/zitadel-rotator/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/zitadel-rotator/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/destroy/zitadel-rotator/*" {
  capabilities = ["update"]
}

# Consumer secrets: the credentials the rotator writes for its targets.
path "secret/data/zitadel/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/zitadel/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/destroy/zitadel/*" {
  capabilities = ["update"]
}

# The token's own lifetime: start-up check and TTL (lookup-self), renewal (renew-self).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
