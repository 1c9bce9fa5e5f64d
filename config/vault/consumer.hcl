# Vault / OpenBao policy for one consumer of a rotated credential: read its
# secret, nothing else.  One policy per consumer; replace
#   secret/    with vault.mount
#   billing    with the target's vault_path below the mount (default zitadel/<target name>)
# e.g. sed 's|zitadel/billing|zitadel/reports|' config/vault/consumer.hcl | vault policy write consumer-reports -
#
# The secret holds the current credential (a ZITADEL key file or a PAT); a
# consumer re-reads it when its credential is refused (see README, "What consumers read").
path "secret/data/zitadel/billing" {
  capabilities = ["read"]
}
