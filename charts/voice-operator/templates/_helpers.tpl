{{/* Chart name, truncated to 63 characters (a label value's limit). */}}
{{- define "voice-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, with the chart name unless the release already holds it. */}}
{{- define "voice-operator.fullname" -}}
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

{{- define "voice-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the chart. */}}
{{- define "voice-operator.labels" -}}
helm.sh/chart: {{ include "voice-operator.chart" . }}
{{ include "voice-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: voice-operator
{{- end }}

{{/* Labels selecting the operator pods. */}}
{{- define "voice-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "voice-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "voice-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "voice-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "voice-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "voice-operator.workerImage" -}}
{{- printf "%s:%s" .Values.worker.image.repository (default .Chart.AppVersion .Values.worker.image.tag) }}
{{- end }}

{{/*
RBAC rules for the namespaced objects the operator touches: in the ClusterRole when it watches
every namespace, in a Role of operator.watchNamespace otherwise.
*/}}
{{- define "voice-operator.namespacedRules" -}}
# Backend controller: watches backends, adds/removes its cleanup finalizer (patch), writes
# status (incl. the scale subresource's fields).
- apiGroups: [voicebackends.dev]
  resources: [voicebackends]
  verbs: [get, list, watch, patch]
- apiGroups: [voicebackends.dev]
  resources: [voicebackends/status]
  verbs: [get, patch]
# Session allocator: rebuilds its ledger from the sessions (list/watch), admits them
# (status), deletes finished ones after their TTL, and adds/removes its finalizer (patch).
- apiGroups: [voicebackends.dev]
  resources: [voicesessions]
  verbs: [get, list, watch, patch, delete]
- apiGroups: [voicebackends.dev]
  resources: [voicesessions/status]
  verbs: [get, patch]
# Worker pods are owned directly (no Deployment): create, mark draining (patch), delete.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, patch, delete]
# The headless `<backend>-workers` Service, applied server-side.
- apiGroups: [""]
  resources: [services]
  verbs: [get, create, patch]
# The per-backend signing keys (rotated with update; watched by the allocator, filtered by
# label), the workers' control-channel TLS Secret (applied server-side), per-session join
# tokens (owned, so GC deletes them), the control channel's CA Secret in the release
# namespace (read, created once) and the LiveKit credentials Secrets backends name in
# spec.liveKit (read with get, to check the backend and sign users' room tokens).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, update, patch, delete]
# Per-backend NetworkPolicy: the workers' control port admits only operator pods.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, patch]
# Events about backends, sessions and providers (kube-runtime's Recorder creates, then
# patches a repeated Event's series).
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}
