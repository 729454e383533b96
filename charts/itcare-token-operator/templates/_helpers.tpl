{{/* Chart name. */}}
{{- define "itcare-token-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, unless overridden. */}}
{{- define "itcare-token-operator.fullname" -}}
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

{{/* Common labels. */}}
{{- define "itcare-token-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "itcare-token-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with merge (dict) (.Values.commonLabels | default dict) ((.Values.global).commonLabels | default dict) }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels. */}}
{{- define "itcare-token-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "itcare-token-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "itcare-token-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "itcare-token-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The rules the operator needs in a namespace it watches: exactly the verbs it uses. */}}
{{- define "itcare-token-operator.watchRules" -}}
- apiGroups: [itcare.cegedim.cloud]
  resources: [itcarecredentials]
  verbs: [list, watch]
- apiGroups: [itcare.cegedim.cloud]
  resources: [itcarecredentials/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, update]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/*
ClusterITCareCredential: only in cluster-wide mode (the template fails otherwise).
Namespaces are read to select them; copies are deleted when a namespace stops
matching or the credential goes (finalizer), hence secrets/delete.
*/}}
{{- define "itcare-token-operator.clusterCredentialRules" -}}
- apiGroups: [itcare.cegedim.cloud]
  resources: [clusteritcarecredentials]
  verbs: [list, watch, patch]
- apiGroups: [itcare.cegedim.cloud]
  resources: [clusteritcarecredentials/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [delete]
{{- end }}

{{/* A probe: the chart's HTTP check and timings, with the user's overrides merged over. */}}
{{- define "itcare-token-operator.probe" -}}
{{- $probe := merge (deepCopy (.overrides | default dict)) .defaults }}
{{- $_ := set $probe "httpGet" (dict "path" .path "port" "health") }}
{{- toYaml $probe }}
{{- end }}
