{{/* Name of the chart, or nameOverride. */}}
{{- define "kvsync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: fullnameOverride, else the release name when it contains the chart name, else release-chart. */}}
{{- define "kvsync.fullname" -}}
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

{{- define "kvsync.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvsync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvsync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kvsync.labels" -}}
helm.sh/chart: {{ include "kvsync.chart" . }}
{{ include "kvsync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kvsync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kvsync.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kvsync.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The CA bundle volume source, when one is configured. */}}
{{- define "kvsync.caKey" -}}
{{- if .Values.caBundle.configMap.name }}{{ default "ca.pem" .Values.caBundle.configMap.key }}{{- else }}{{ default "ca.pem" .Values.caBundle.secret.key }}{{- end }}
{{- end }}

{{- /* What kvsync run calls in the namespaces it serves, rule by rule (tests/chart.rs lists the calls; a test compares). */}}
{{- define "kvsync.rules" -}}
# Watch bindings; patch adds and removes the Merge finalizer. For
# ClusterVaultSecretBindings kvsync keeps a binding in each selected namespace:
# server-side apply (patch; create because apply creates a missing binding),
# and delete when the namespace stops being selected.
- apiGroups: ["kvsync.io"]
  resources: ["vaultsecretbindings"]
  verbs: ["list", "watch", "patch", "create", "delete"]
# Status is written with server-side apply on the status subresource.
- apiGroups: ["kvsync.io"]
  resources: ["vaultsecretbindings/status"]
  verbs: ["patch"]
# Secrets owned by a binding carry blockOwnerDeletion: the
# OwnerReferencesPermissionEnforcement admission plugin (OpenShift) requires it.
- apiGroups: ["kvsync.io"]
  resources: ["vaultsecretbindings/finalizers"]
  verbs: ["update"]
# Target Secrets: get (current data for KeepLast and drift), server-side apply
# (patch; create because apply creates a missing Secret), list/watch of the
# managed ones' metadata for drift repair; get of clientSecretRef Secrets;
# delete of the Secret a binding owned before its target.name changed.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# identity.serviceAccountName (a cluster binding's serviceAccountRef: in the
# namespace it names): the ServiceAccounts' workload-identity annotations,
# from a metadata watch (a GET only for one not yet seen).
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "list", "watch"]
{{- if .Values.rbac.serviceAccountTokenCreate }}
# identity.serviceAccountName / serviceAccountRef: a TokenRequest (audience api://AzureADTokenExchange)
# to exchange at Entra ID for that ServiceAccount. RBAC cannot narrow the
# audience: whoever controls the operator can mint tokens for any
# ServiceAccount in the watched namespaces. Turn it off
# (rbac.serviceAccountTokenCreate=false) if no binding uses ServiceAccounts,
# or narrow it with watchNamespaces.
- apiGroups: [""]
  resources: ["serviceaccounts/token"]
  verbs: ["create"]
{{- end }}
{{- if .Values.rbac.rolloutRestart }}
# spec.rollout: look up targets (get) and annotate their pod template (patch).
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "patch"]
{{- end }}
# Synced / SyncFailed / Repaired events; repeated events become a series (patch).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
