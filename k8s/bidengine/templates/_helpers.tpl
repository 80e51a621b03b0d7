{{/* Names */}}
{{- define "bidengine.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bidengine.fullname" -}}
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

{{- define "bidengine.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels; call with the root context. */}}
{{- define "bidengine.labels" -}}
helm.sh/chart: {{ include "bidengine.chart" . }}
app.kubernetes.io/name: {{ include "bidengine.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bidengine
{{- end }}

{{/* Selector labels of one component; call with (dict "root" $ "component" "gateway"). */}}
{{- define "bidengine.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bidengine.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "bidengine.componentLabels" -}}
{{ include "bidengine.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "bidengine.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bidengine.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bidengine.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/* Secrets */}}
{{- define "bidengine.appSecretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-urls" (include "bidengine.fullname" .)) }}
{{- end }}

{{/* The chart writes its own URL Secret only for a URL that is neither in-cluster nor in an existing Secret. */}}
{{- define "bidengine.createAppSecret" -}}
{{- if and (not .Values.secrets.existingSecret) (or (not .Values.postgresql.enabled) (not .Values.redis.enabled)) }}true{{- end }}
{{- end }}

{{- define "bidengine.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "bidengine.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bidengine.postgresql.secretName" -}}
{{- .Values.postgresql.auth.existingSecret | default (include "bidengine.postgresql.fullname" .) }}
{{- end }}

{{- define "bidengine.redis.fullname" -}}
{{- printf "%s-redis" (include "bidengine.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bidengine.redis.secretName" -}}
{{- .Values.redis.auth.existingSecret | default (include "bidengine.redis.fullname" .) }}
{{- end }}

{{/*
A password kept across upgrades: the value given, else the one already in the cluster's Secret, else a new one.
Call with (dict "root" $ "secret" NAME "key" KEY "given" VALUE).
*/}}
{{- define "bidengine.stablePassword" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret }}
{{- $current := "" }}
{{- if and $existing $existing.data }}
{{- $current = (index $existing.data .key | default "" | b64dec) }}
{{- end }}
{{- .given | default $current | default (randAlphaNum 32) }}
{{- end }}

{{/*
DATABASE_URL and REDIS_URL for every bidengine container. In-cluster servers: the URL is composed by the kubelet
from the server's password Secret ($(VAR) expansion); managed servers: the URL comes whole from a Secret.
*/}}
{{- define "bidengine.urlEnv" -}}
{{- if .Values.postgresql.enabled }}
- name: POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "bidengine.postgresql.secretName" . }}
      key: {{ .Values.postgresql.auth.secretKey }}
- name: DATABASE_URL
  value: {{ printf "postgresql://%s:$(POSTGRES_PASSWORD)@%s:%d/%s" .Values.postgresql.auth.username (include "bidengine.postgresql.fullname" .) (int .Values.postgresql.port) .Values.postgresql.auth.database | quote }}
{{- else }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "bidengine.appSecretName" . }}
      key: {{ .Values.secrets.databaseUrlKey }}
{{- end }}
{{- if .Values.redis.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "bidengine.redis.secretName" . }}
      key: {{ .Values.redis.auth.secretKey }}
- name: REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:%d/%d" (include "bidengine.redis.fullname" .) (int .Values.redis.port) (int .Values.redis.database) | quote }}
{{- else }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "bidengine.appSecretName" . }}
      key: {{ .Values.secrets.redisUrlKey }}
{{- end }}
{{- end }}

{{/* Hook phases of the migration Job: an in-cluster database only exists after the install's resources. */}}
{{- define "bidengine.migrations.hooks" -}}
{{- if .Values.migrations.hooks }}
{{- .Values.migrations.hooks }}
{{- else if .Values.postgresql.enabled }}
{{- "post-install,pre-upgrade" }}
{{- else }}
{{- "pre-install,pre-upgrade" }}
{{- end }}
{{- end }}

{{/*
A probe from values; one without a handler gets the exec command of the component (probeCommand) or the chart
(agentProbeCommand). Call with (dict "root" $ "component" $c "probe" $c.livenessProbe).
*/}}
{{- define "bidengine.probe" -}}
{{- $probe := deepCopy .probe }}
{{- if not (or $probe.httpGet $probe.tcpSocket $probe.grpc $probe.exec) }}
{{- $_ := set $probe "exec" (dict "command" (.component.probeCommand | default .root.Values.agentProbeCommand)) }}
{{- end }}
{{- toYaml $probe }}
{{- end }}
