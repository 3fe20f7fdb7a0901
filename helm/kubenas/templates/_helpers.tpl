{{/* Names: FULLNAME is RELEASE-kubenas, or RELEASE when it already contains the chart name. */}}
{{- define "kubenas.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubenas.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kubenas.operatorName" -}}
{{- printf "%s-operator" (include "kubenas.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubenas.serviceAccountName" -}}
{{- default (include "kubenas.operatorName" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "kubenas.passwordKeySecret" -}}
{{- default (printf "%s-password-key" (include "kubenas.fullname" .) | trunc 63 | trimSuffix "-") .Values.operator.passwordKey.existingSecret -}}
{{- end -}}

{{/* Labels of every object of the release. */}}
{{- define "kubenas.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: kubenas
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The operator pods' selector labels; the operator gets them as KUBENAS_OPERATOR_POD_LABELS
     so the NetworkPolicy of each managed Redis admits exactly these pods. */}}
{{- define "kubenas.operatorSelectorLabels" -}}
app.kubernetes.io/name: kubenas-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kubenas.operatorLabels" -}}
{{ include "kubenas.labels" . }}
{{ include "kubenas.operatorSelectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* image: REPOSITORY:TAG, the tag defaulting to the chart's appVersion. */}}
{{- define "kubenas.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}
