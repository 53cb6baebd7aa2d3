{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "pdserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Resource-name prefix. Kept to 40 characters so that suffixed names (KubeRay adds
"-head-svc" and pod suffixes to the RayCluster's name) stay within Kubernetes' limits.
*/}}
{{- define "pdserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pdserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "pdserve.labels" -}}
helm.sh/chart: {{ include "pdserve.chart" . }}
{{ include "pdserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pdserve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "pdserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pdserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one component: include "pdserve.componentSelector" (list . "router") */}}
{{- define "pdserve.componentSelector" -}}
{{ include "pdserve.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
The label every pod of this release carries; the NetworkPolicies admit traffic from pods that
have it (and the same instance label).
*/}}
{{- define "pdserve.memberLabel" -}}
pdserve.io/member: {{ include "pdserve.fullname" . | quote }}
{{- end }}

{{/* Labels of a pod template of one component. */}}
{{- define "pdserve.podLabels" -}}
{{ include "pdserve.componentSelector" . }}
{{ include "pdserve.memberLabel" (index . 0) }}
{{- end }}

{{- define "pdserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "pdserve.rayClusterName" -}}
{{- include "pdserve.fullname" . }}
{{- end }}

{{/* KubeRay names the head Service "<raycluster>-head-svc". */}}
{{- define "pdserve.rayHeadService" -}}
{{- printf "%s-head-svc" (include "pdserve.rayClusterName" .) }}
{{- end }}

{{- define "pdserve.redisName" -}}
{{- printf "%s-redis" (include "pdserve.fullname" .) }}
{{- end }}

{{- define "pdserve.redisURL" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s:%d/0" (include "pdserve.redisName" .) (int .Values.redis.port) }}
{{- else }}
{{- required "redis.external.url is required when redis.enabled is false" .Values.redis.external.url }}
{{- end }}
{{- end }}

{{- define "pdserve.configPath" -}}
/etc/pdserve/config.yaml
{{- end }}

{{/* Directory of the model inside the containers. */}}
{{- define "pdserve.modelPath" -}}
{{- $m := .Values.model }}
{{- if eq $m.source "pvc" }}
{{- if $m.pvc.path }}
{{- printf "%s/%s" (trimSuffix "/" $m.mountPath) (trimPrefix "/" $m.pvc.path) }}
{{- else }}
{{- $m.mountPath }}
{{- end }}
{{- else if eq $m.source "hostPath" }}
{{- $m.mountPath }}
{{- else }}
{{- printf "%s/model" (trimSuffix "/" $m.mountPath) }}
{{- end }}
{{- end }}

{{/* Environment shared by every pdserve container. */}}
{{- define "pdserve.commonEnv" -}}
- name: PDSERVE_CONFIG
  value: {{ include "pdserve.configPath" . }}
- name: PDSERVE_REDIS_URL
  value: {{ include "pdserve.redisURL" . | quote }}
{{- if and (not .Values.redis.enabled) .Values.redis.external.passwordSecret.name }}
- name: PDSERVE_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.passwordSecret.name }}
      key: {{ .Values.redis.external.passwordSecret.key }}
{{- end }}
{{- end }}

{{/* PDSERVE_MODEL_PATH for containers that read the model. */}}
{{- define "pdserve.modelEnv" -}}
- name: PDSERVE_MODEL_PATH
  value: {{ include "pdserve.modelPath" . | quote }}
{{- end }}

{{/* The model volume: include "pdserve.modelVolume" (dict "root" . "component" "router") */}}
{{- define "pdserve.modelVolume" -}}
{{- $m := .root.Values.model -}}
- name: model
{{- if eq $m.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ required "model.pvc.claimName is required when model.source is pvc" $m.pvc.claimName }}
    readOnly: true
{{- else if eq $m.source "hostPath" }}
  hostPath:
    path: {{ required "model.hostPath.path is required when model.source is hostPath" $m.hostPath.path }}
    type: Directory
{{- else }}
  emptyDir:
    sizeLimit: {{ $m.download.sizeLimit }}
{{- end }}
{{- end }}

{{- define "pdserve.modelMount" -}}
- name: model
  mountPath: {{ .Values.model.mountPath }}
  readOnly: {{ ne .Values.model.source "download" }}
{{- end }}

{{/*
Init container that downloads the model (model.source: download):
include "pdserve.modelDownload" (dict "root" . "tokenizerOnly" true)
*/}}
{{- define "pdserve.modelDownload" -}}
{{- $root := .root }}
{{- $m := $root.Values.model }}
{{- if eq $m.source "download" -}}
- name: model-download
  image: {{ include "pdserve.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  command:
    - hf
    - download
    - {{ required "model.download.modelId is required when model.source is download" $m.download.modelId | quote }}
    - --local-dir
    - {{ include "pdserve.modelPath" $root | quote }}
    {{- with $m.download.revision }}
    - --revision
    - {{ . | quote }}
    {{- end }}
    {{- if .tokenizerOnly }}
    - --include
    - "*.json"
    - "*.model"
    - "*.txt"
    - "*.jinja"
    - "*.tiktoken"
    {{- end }}
  env:
    - name: HF_HOME
      value: /tmp/hf
    {{- if $m.download.tokenSecret.name }}
    - name: HF_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ $m.download.tokenSecret.name }}
          key: {{ $m.download.tokenSecret.key }}
    {{- end }}
  {{- with $m.download.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: model
      mountPath: {{ $m.mountPath }}
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end }}

{{/* Checks across values that the JSON schema cannot express. */}}
{{- define "pdserve.validate" -}}
{{- range $role := list "prefill" "decode" }}
{{- $g := index $.Values.ray $role }}
{{- if gt (int $g.minReplicas) (int $g.maxReplicas) }}
{{- fail (printf "ray.%s.minReplicas (%d) must not exceed ray.%s.maxReplicas (%d)" $role (int $g.minReplicas) $role (int $g.maxReplicas)) }}
{{- end }}
{{- if or (lt (int $g.replicas) (int $g.minReplicas)) (gt (int $g.replicas) (int $g.maxReplicas)) }}
{{- fail (printf "ray.%s.replicas (%d) must lie within ray.%s.minReplicas..maxReplicas (%d..%d)" $role (int $g.replicas) $role (int $g.minReplicas) (int $g.maxReplicas)) }}
{{- end }}
{{- end }}
{{- if and .Values.router.autoscaling.enabled (gt (int .Values.router.autoscaling.minReplicas) (int .Values.router.autoscaling.maxReplicas)) }}
{{- fail "router.autoscaling.minReplicas must not exceed router.autoscaling.maxReplicas" }}
{{- end }}
{{- if le (float64 .Values.redis.ttlSeconds) (float64 .Values.redis.heartbeatSeconds) }}
{{- fail "redis.ttlSeconds must exceed redis.heartbeatSeconds" }}
{{- end }}
{{- end }}

{{/* planner.max_total_workers: the value, or the sum of the groups' maxReplicas. */}}
{{- define "pdserve.maxTotalWorkers" -}}
{{- if .Values.planner.maxTotalWorkers }}
{{- .Values.planner.maxTotalWorkers }}
{{- else }}
{{- add .Values.ray.prefill.maxReplicas .Values.ray.decode.maxReplicas }}
{{- end }}
{{- end }}
