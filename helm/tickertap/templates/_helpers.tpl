{{/*
Helpers. Each component is called with (dict "root" $ "key" <services key> "svc" <its values>).
Resource names are fixed (tickertap-<component>): the Vault roles bind these service
account names, so one release per namespace.
*/}}

{{- define "tickertap.component" -}}
{{- .key | kebabcase -}}
{{- end }}

{{- define "tickertap.fullname" -}}
{{- printf "tickertap-%s" (include "tickertap.component" .) -}}
{{- end }}

{{- define "tickertap.selectorLabels" -}}
app.kubernetes.io/name: tickertap
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ include "tickertap.component" . }}
{{- end }}

{{- define "tickertap.labels" -}}
{{ include "tickertap.selectorLabels" . }}
app.kubernetes.io/part-of: tickertap
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}

{{- define "tickertap.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .svc.image .root.Values.image.tag -}}
{{- end }}

{{/* The service's TICKERTAP_* settings (a ConfigMap's data; the migration Job's env). */}}
{{- define "tickertap.settings" -}}
TICKERTAP_ENVIRONMENT: {{ .root.Values.environment | quote }}
TICKERTAP_LOG_LEVEL: {{ .root.Values.logLevel | quote }}
TICKERTAP_HTTP_HOST: "0.0.0.0"
TICKERTAP_HTTP_PORT: "8000"
TICKERTAP_FORWARDED_ALLOW_IPS: {{ .root.Values.ingress.trustedProxies | quote }}
TICKERTAP_DB_HOST: {{ .root.Values.postgres.host | quote }}
TICKERTAP_DB_PORT: {{ .root.Values.postgres.port | quote }}
TICKERTAP_DB_NAME: {{ .root.Values.postgres.database | quote }}
TICKERTAP_DB_SCHEMA: {{ .svc.schema | quote }}
{{- if .root.Values.postgres.readerHost }}
TICKERTAP_DB_READER_HOST: {{ .root.Values.postgres.readerHost | quote }}
TICKERTAP_DB_READER_PORT: {{ .root.Values.postgres.readerPort | quote }}
{{- end }}
TICKERTAP_KAFKA_BOOTSTRAP_SERVERS: {{ .root.Values.kafka.bootstrapServers | quote }}
TICKERTAP_KAFKA_SCHEMA_REGISTRY_URL: {{ .root.Values.kafka.schemaRegistryUrl | quote }}
TICKERTAP_VAULT_ADDR: {{ .root.Values.vault.addr | quote }}
TICKERTAP_VAULT_ROLE: {{ .svc.schema | quote }}
TICKERTAP_VAULT_SECRET_ID_FILE: "/vault/secrets/secret_id"
TICKERTAP_AUTH_ISSUER: {{ .root.Values.auth.issuer | quote }}
TICKERTAP_AUTH_AUDIENCE: {{ .root.Values.auth.audience | quote }}
TICKERTAP_AUTH_JWKS_URL: "http://tickertap-auth:8000/.well-known/jwks.json"
{{- range $name, $value := .svc.env }}
{{ $name }}: {{ $value | quote }}
{{- end }}
{{- end }}

{{/*
Vault Agent Injector annotations: an init container logs in to Vault with the pod's service
account (Kubernetes auth, role tickertap-<schema>), reads the service's AppRole role_id and
issues it a secret_id, into /vault/secrets (in memory). The service then logs in with its
AppRole as everywhere else and renews its own token and database lease.
*/}}
{{- define "tickertap.vaultAnnotations" -}}
vault.hashicorp.com/agent-inject: "true"
vault.hashicorp.com/agent-pre-populate-only: "true"
vault.hashicorp.com/agent-service-account-token-volume-name: vault-token
vault.hashicorp.com/auth-path: {{ .root.Values.vault.kubernetesAuthPath | quote }}
vault.hashicorp.com/role: {{ printf "%s%s" .root.Values.vault.rolePrefix .svc.schema | quote }}
vault.hashicorp.com/agent-run-as-user: "10001"
vault.hashicorp.com/agent-run-as-group: "10001"
vault.hashicorp.com/agent-inject-secret-role_id: {{ printf "auth/approle/role/%s/role-id" .svc.schema | quote }}
vault.hashicorp.com/agent-inject-template-role_id: {{ printf "{{- with secret \"auth/approle/role/%s/role-id\" }}{{ .Data.role_id }}{{ end }}" .svc.schema | quote }}
vault.hashicorp.com/agent-inject-secret-secret_id: {{ printf "auth/approle/role/%s/secret-id" .svc.schema | quote }}
vault.hashicorp.com/agent-inject-template-secret_id: {{ printf "{{- with secret \"auth/approle/role/%s/secret-id\" \"metadata={}\" }}{{ .Data.secret_id }}{{ end }}" .svc.schema | quote }}
{{- end }}

{{/*
The role_id is read from the injected file (the settings take it from the environment).
Runs the image's module (TICKERTAP_MODULE), or `.module` when the context names one (the
portfolio job workers).
*/}}
{{- define "tickertap.command" -}}
- /bin/sh
- -c
{{- if .module }}
- {{ printf "export TICKERTAP_VAULT_ROLE_ID=\"$(cat /vault/secrets/role_id)\" && exec python -m %s" .module | squote }}
{{- else }}
- 'export TICKERTAP_VAULT_ROLE_ID="$(cat /vault/secrets/role_id)" && exec python -m "$TICKERTAP_MODULE"'
{{- end }}
{{- end }}

{{/*
The pod's volumes: /tmp (the only writable path), and the service account token for the
Vault agent's Kubernetes login, projected and short-lived. automountServiceAccountToken is
false, so the service's own container never holds a Kubernetes API token; the injector
mounts `vault-token` into its agent only (agent-service-account-token-volume-name).
*/}}
{{- define "tickertap.volumes" -}}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: {{ .root.Values.tmpSizeLimit }}
- name: vault-token
  projected:
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: {{ .root.Values.vault.tokenExpirationSeconds }}
{{- end }}

{{- define "tickertap.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/*
The periodic reconciliation with the ledger (portfolio-calculation's `reconcile` block; see
its settings.py): the ledger's Service and auth's token endpoint in the release's namespace
(the NetworkPolicies let the API pods reach both on 8000), the machine client's id and
scope, the interval, and its secret as a file of the operator's Secret, mounted read-only:
the service reads it at each token request, so a rotated Secret is picked up without a
restart (the kubelet refreshes the file; no subPath, which would freeze it).
*/}}
{{- define "tickertap.reconcileSecretDir" -}}
/run/tickertap-reconcile
{{- end }}

{{- define "tickertap.reconcileEnv" -}}
{{- $reconcile := .svc.reconcile -}}
- name: TICKERTAP_RECONCILE_LEDGER_URL
  value: {{ printf "http://%s:8000" (include "tickertap.fullname" (dict "key" "ledger")) | quote }}
- name: TICKERTAP_RECONCILE_TOKEN_URL
  value: {{ printf "http://%s:8000/oauth/token" (include "tickertap.fullname" (dict "key" "auth")) | quote }}
- name: TICKERTAP_RECONCILE_CLIENT_ID
  value: {{ required "reconcile.clientId: the machine client provisioned with set-client" $reconcile.clientId | quote }}
- name: TICKERTAP_RECONCILE_SCOPE
  value: {{ $reconcile.scope | quote }}
- name: TICKERTAP_RECONCILE_INTERVAL_S
  value: {{ $reconcile.intervalS | quote }}
- name: TICKERTAP_RECONCILE_CLIENT_SECRET_FILE
  value: {{ printf "%s/client_secret" (include "tickertap.reconcileSecretDir" .) | quote }}
{{- end }}

{{/* Owner root, group the pod's fsGroup (10001): readable by the service's user only. */}}
{{- define "tickertap.reconcileVolume" -}}
{{- $reconcile := .svc.reconcile -}}
- name: reconcile-client
  secret:
    secretName: {{ required "reconcile.secretName: the Secret holding the machine client's secret (helm/README.md)" $reconcile.secretName }}
    items:
      - key: {{ required "reconcile.secretKey: its key in that Secret" $reconcile.secretKey }}
        path: client_secret
    defaultMode: 0440
{{- end }}
