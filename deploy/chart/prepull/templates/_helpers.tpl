{{/* The namespace every namespaced object of the chart goes to. */}}
{{- define "prepull.namespace" -}}
{{- .Values.namespace.name | default .Release.Namespace -}}
{{- end -}}

{{/* The image of both binaries. */}}
{{- define "prepull.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Labels of one component: prepull.labels (dict "name" NAME). */}}
{{- define "prepull.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/part-of: prepull
{{- end -}}
