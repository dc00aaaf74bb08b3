{{/* Names */}}
{{- define "rayline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rayline.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "rayline.rayClusterName" -}}{{ include "rayline.fullname" . }}-ray{{- end -}}
{{- define "rayline.rayServiceName" -}}{{ include "rayline.fullname" . }}-serve{{- end -}}
{{- define "rayline.mlflowName" -}}{{ include "rayline.fullname" . }}-mlflow{{- end -}}
{{- define "rayline.postgresName" -}}{{ include "rayline.fullname" . }}-postgres{{- end -}}
{{- define "rayline.raySAName" -}}{{ include "rayline.fullname" . }}-ray{{- end -}}
{{- define "rayline.mlflowSAName" -}}{{ include "rayline.fullname" . }}-mlflow{{- end -}}
{{- define "rayline.storagePVCName" -}}
{{- default (printf "%s-shared" (include "rayline.fullname" .)) .Values.storage.pvc.existingClaim -}}
{{- end -}}

{{/* Labels */}}
{{- define "rayline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rayline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "rayline.labels" -}}
{{ include "rayline.podLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/*
Labels of Ray pod templates: no chart or app version. KubeRay hashes the whole cluster spec,
pod labels included, to decide whether a RayService needs a new cluster (and a RayCluster with
upgradeStrategy Recreate new pods), so a chart version in them would rebuild serving on every
chart bump. The versions stay on the KubeRay objects themselves.
*/}}
{{- define "rayline.podLabels" -}}
{{ include "rayline.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rayline
{{- end -}}

{{/* Images */}}
{{- define "rayline.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}
{{- end -}}

{{- define "rayline.mlflowImage" -}}
{{- if .Values.mlflow.image.repository -}}
{{- printf "%s:%s" .Values.mlflow.image.repository (required "mlflow.image.tag is required when mlflow.image.repository is set" .Values.mlflow.image.tag) -}}
{{- else -}}
{{- include "rayline.image" . -}}
{{- end -}}
{{- end -}}

{{/* URLs */}}
{{- define "rayline.mlflowURL" -}}
http://{{ include "rayline.mlflowName" . }}.{{ .Release.Namespace }}.svc:{{ .Values.mlflow.port }}
{{- end -}}

{{/*
The serveConfigV2 `args` of deployments.app:build_app: exactly the fields of
deployments/serve_config.py ServeAppConfig (extra fields fail the deployment).
*/}}
{{- define "rayline.serveAppArgs" -}}
{{- $app := .Values.serving.app -}}
{{- $args := dict
  "model_name" $app.modelName
  "baseline" (printf "models:/%s@%s" $app.modelName $app.baselineAlias)
  "tracking_uri" (include "rayline.servingTrackingURI" .)
  "admin_token_env" "RAYLINE_ADMIN_TOKEN"
  "predict_token_env" "RAYLINE_SERVE_PREDICT_TOKEN"
  "state_dir" (include "rayline.serveStateDir" .)
  "controller" $app.controller
  "colocate" $app.colocate
  "model_calls" $app.modelCalls
  "sticky_field" (default nil $app.stickyField)
  "replicas" $app.replicas
  "num_cpus" $app.numCpus
  "router_replicas" $app.routerReplicas
  "router_num_cpus" $app.routerNumCpus
  "max_ongoing_requests" $app.maxOngoingRequests
  "max_queued_requests" $app.maxQueuedRequests
  "retry_after_s" $app.retryAfterSeconds
  "request_timeout_s" $app.requestTimeoutSeconds
  "max_body_bytes" $app.maxBodyBytes
  "max_instances" $app.maxInstances
  "batch_max_size" $app.batchMaxSize
  "batch_wait_timeout_s" $app.batchWaitTimeoutSeconds
  "access_log" $app.accessLog
  "serve_log_level" $app.serveLogLevel
  "max_shadow_in_flight" $app.maxShadowInFlight
  "resolve_interval_s" $app.resolveIntervalSeconds
-}}
{{- with $app.maxReplicasPerNode }}{{ $_ := set $args "max_replicas_per_node" . }}{{ end -}}
{{- with $app.controllerResources }}{{ $_ := set $args "controller_resources" . }}{{ end -}}
{{- with $app.candidateAlias }}{{ $_ := set $args "candidate" (printf "models:/%s@%s" $app.modelName .) }}{{ end -}}
{{- with $app.traffic }}{{ $_ := set $args "traffic" . }}{{ end -}}
{{- with $app.shadow }}{{ $_ := set $args "shadow" . }}{{ end -}}
{{- $llmGpus := float64 (default 0 $app.llm.numGpus) }}
{{- if eq (default "tabular" $app.kind) "llm" }}
{{- $_ := set $args "kind" "llm" }}
{{- $llm := dict "max_active" $app.llm.maxActive "max_waiting" $app.llm.maxWaiting "torch_threads" $app.llm.torchThreads "dtype" $app.llm.dtype }}
{{- if gt $llmGpus 0.0 }}
{{- include "rayline.servingGpusFit" (dict "root" . "key" "serving.app.llm.numGpus" "gpus" $llmGpus) }}
{{- $_ := set $llm "num_gpus" $app.llm.numGpus }}
{{- end }}
{{- $_ := set $args "llm" $llm }}
{{- else if gt $llmGpus 0.0 }}
{{- fail "serving.app.llm.numGpus applies to a language model: set serving.app.kind to llm, or numGpus to 0" }}
{{- end -}}
{{- toYaml $args -}}
{{- end -}}

{{/* Fails the render when a language model asks `gpus` GPUs per replica (values key `key`) but no
serving worker group has that many per pod: Serve would wait forever for a place to start the replica. */}}
{{- define "rayline.servingGpusFit" -}}
{{- $most := 0 -}}
{{- range .root.Values.serving.workerGroups -}}
{{- $most = max $most (int (default 0 .gpus)) -}}
{{- end -}}
{{- if lt (float64 $most) .gpus -}}
{{- fail (printf "%s is %v but no serving worker group has that many GPUs per pod (serving.workerGroups[].gpus, most: %d): its replicas could never be placed; give a group gpus (and a toleration of the GPU taint), see examples/llm-gpu.yaml" .key .gpus $most) -}}
{{- end -}}
{{- end -}}

{{/* MLflow as the serving app sees it: serving.app.trackingUri, else the in-cluster Service. */}}
{{- define "rayline.servingTrackingURI" -}}
{{- if .Values.serving.app.trackingUri -}}
{{- .Values.serving.app.trackingUri -}}
{{- else if .Values.mlflow.enabled -}}
{{- include "rayline.mlflowURL" . -}}
{{- else -}}
{{- fail "serving.app.trackingUri is required when mlflow.enabled is false" -}}
{{- end -}}
{{- end -}}

{{/* The rollout controller's state_dir: on the shared claim (pvc) or the serving state claim (s3). */}}
{{- define "rayline.serveStateDir" -}}
{{- if eq .Values.storage.type "pvc" -}}
{{- printf "%s/serve-state" .Values.storage.pvc.mountPath -}}
{{- else -}}
{{- .Values.serving.state.mountPath -}}
{{- end -}}
{{- end -}}

{{/* Storage roots: a mounted volume or an S3 prefix (no trailing slash: an empty prefix is the bucket) */}}
{{- define "rayline.storageRoot" -}}
{{- if eq .Values.storage.type "s3" -}}
{{- $bucket := required "storage.s3.bucket is required when storage.type is s3" .Values.storage.s3.bucket -}}
{{- printf "s3://%s/%s" $bucket (trimAll "/" (toString .Values.storage.s3.prefix)) | trimSuffix "/" -}}
{{- else -}}
{{- .Values.storage.pvc.mountPath | toString | trimSuffix "/" -}}
{{- end -}}
{{- end -}}

{{/*
Environment of every Ray container (head, workers, submitters): RAYLINE_* settings,
MLflow location and credentials, S3 credentials, caches under the writable /tmp.
Call with a dict: {"root": $, "rayAddress": "..."}.
*/}}
{{- define "rayline.rayEnv" -}}
{{- $root := .root -}}
- name: RAYLINE_LOG_FORMAT
  value: {{ $root.Values.settings.logFormat | quote }}
- name: RAYLINE_LOG_LEVEL
  value: {{ $root.Values.settings.logLevel | quote }}
- name: RAYLINE_MLFLOW_EXPERIMENT
  value: {{ $root.Values.settings.mlflowExperiment | quote }}
- name: RAYLINE_STATE_DIR
  value: /tmp/rayline
- name: RAYLINE_STORAGE_ROOT
  value: {{ include "rayline.storageRoot" $root | quote }}
- name: RAYLINE_DATASETS_ROOT
  value: {{ printf "%s/datasets" (include "rayline.storageRoot" $root) | quote }}
- name: RAYLINE_CHECKPOINTS_ROOT
  value: {{ printf "%s/checkpoints" (include "rayline.storageRoot" $root) | quote }}
{{- if .rayAddress }}
- name: RAYLINE_RAY_ADDRESS
  value: {{ .rayAddress | quote }}
{{- end }}
{{- if $root.Values.mlflow.enabled }}
- name: RAYLINE_MLFLOW_TRACKING_URI
  value: {{ include "rayline.mlflowURL" $root | quote }}
- name: MLFLOW_TRACKING_URI
  value: {{ include "rayline.mlflowURL" $root | quote }}
{{- if $root.Values.mlflow.auth.enabled }}
- name: MLFLOW_TRACKING_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ required "mlflow.auth.clientSecret is required when mlflow.auth.enabled" $root.Values.mlflow.auth.clientSecret }}
      key: username
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.mlflow.auth.clientSecret }}
      key: password
{{- end }}
{{- end }}
{{- if eq $root.Values.storage.type "s3" }}
{{- if $root.Values.storage.s3.endpointUrl }}
- name: RAYLINE_S3_ENDPOINT_URL
  value: {{ $root.Values.storage.s3.endpointUrl | quote }}
- name: AWS_ENDPOINT_URL_S3
  value: {{ $root.Values.storage.s3.endpointUrl | quote }}
{{- end }}
- name: AWS_DEFAULT_REGION
  value: {{ $root.Values.storage.s3.region | quote }}
- name: RAYLINE_S3_REGION
  value: {{ $root.Values.storage.s3.region | quote }}
{{- if $root.Values.storage.s3.credentialsSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.storage.s3.credentialsSecret }}
      key: access-key-id
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.storage.s3.credentialsSecret }}
      key: secret-access-key
{{- end }}
{{- end }}
{{- if and (eq $root.Values.rayAuth.mode "token") $root.Values.rayAuth.secretName }}
- name: RAYLINE_RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.rayAuth.secretName }}
      key: auth_token
{{- end }}
- name: HOME
  value: /tmp/home
- name: XDG_CACHE_HOME
  value: /tmp/cache
- name: TORCH_EXTENSIONS_DIR
  value: /tmp/cache/torch_extensions
- name: TRITON_CACHE_DIR
  value: /tmp/cache/triton
- name: RAY_TRAIN_ENABLE_PRINT_PATCH
  value: "0"
{{- if eq .component "ray-serve" }}
{{- /* Serve's HTTP ingress (cluster/serve_ingress.py): HAProxy on 8000 of every serving pod, each ingress
replica serving HTTP itself behind it (KubeRay's "Enable High Throughput on Ray Serve"); "proxy": Serve's own. */}}
{{- $haproxy := eq (include "rayline.haproxyIngress" $root) "true" }}
- name: RAY_SERVE_ENABLE_HA_PROXY
  value: {{ ternary "1" "0" $haproxy | quote }}
{{- if $haproxy }}
- name: RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S
  value: {{ $root.Values.serving.haproxyDrainSeconds | quote }}
{{- /* retried on another ingress replica when one closes without answering (cluster/serve_ingress.py RETRY_ON) */}}
- name: RAY_SERVE_HAPROXY_RETRY_ON
  value: "conn-failure empty-response"
- name: RAY_SERVE_HAPROXY_METRICS_PORT
  value: {{ $root.Values.serving.haproxyMetricsPort | quote }}
{{- end }}
{{- end }}
{{- with $root.Values.settings.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with (.group | default dict).extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volumes every Ray pod mounts: writable /tmp, /dev/shm for the object store, shared storage. */}}
{{- define "rayline.rayVolumes" -}}
- name: tmp
  emptyDir: {}
- name: dshm
  emptyDir:
    medium: Memory
    {{- with .shmSize }}
    sizeLimit: {{ . }}
    {{- end }}
{{- if eq .root.Values.storage.type "pvc" }}
- name: shared
  persistentVolumeClaim:
    claimName: {{ include "rayline.storagePVCName" .root }}
{{- end }}
{{- with (.group | default dict).extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "rayline.rayVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
{{- if eq .root.Values.storage.type "pvc" }}
- name: shared
  mountPath: {{ .root.Values.storage.pvc.mountPath }}
{{- end }}
{{- with (.group | default dict).extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Container resources, adding nvidia.com/gpu to requests and limits when gpus > 0. */}}
{{- define "rayline.groupResources" -}}
{{- $res := deepCopy .resources -}}
{{- if gt (int .gpus) 0 -}}
{{- $_ := set $res.requests "nvidia.com/gpu" (int .gpus) -}}
{{- $_ := set $res.limits "nvidia.com/gpu" (int .gpus) -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* "true" when Serve's HTTP ingress is Ray's HAProxy (serving.ingress), else "". Call with the root context. */}}
{{- define "rayline.haproxyIngress" -}}
{{- if eq .Values.serving.ingress "haproxy" }}true{{ end }}
{{- end -}}

{{/* The ports every Ray container names: Ray's metrics; on serving pods behind HAProxy also HAProxy's.
Call with {"root": $, "component": ...}. */}}
{{- define "rayline.rayPorts" -}}
- name: metrics
  containerPort: {{ .root.Values.monitoring.rayMetricsPort }}
{{- if and (eq .component "ray-serve") (include "rayline.haproxyIngress" .root) }}
- name: haproxy-metrics
  containerPort: {{ .root.Values.serving.haproxyMetricsPort }}
{{- end }}
{{- end -}}

{{/* A Ray pod template: metadata, scheduling and extension points of one group. Call with
{"root": $, "group": <head or worker group values>, "component": ..., "extraLabels": {...},
"automount": bool, "container": <the Ray container's name, resources and ports, YAML>, "rayAddress": ...}. */}}
{{- define "rayline.rayPodTemplate" -}}
{{- $root := .root -}}
{{- $g := .group -}}
metadata:
  labels:
    {{- include "rayline.podLabels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    {{- with .extraLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with $g.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $g.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "rayline.raySAName" $root }}
  automountServiceAccountToken: {{ .automount }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  {{- with $g.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $g.runtimeClassName }}
  runtimeClassName: {{ . }}
  {{- end }}
  {{- with $g.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - {{ .container | trim | nindent 6 | trim }}
      image: {{ include "rayline.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      securityContext:
        {{- toYaml $root.Values.containerSecurityContext | nindent 8 }}
      {{- with (concat ($root.Values.settings.envFrom | default list) ($g.envFrom | default list)) }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      env:
        {{- include "rayline.rayEnv" (dict "root" $root "rayAddress" .rayAddress "group" $g "component" .component) | nindent 8 }}
      volumeMounts:
        {{- include "rayline.rayVolumeMounts" (dict "root" $root "group" $g) | nindent 8 }}
  volumes:
    {{- include "rayline.rayVolumes" (dict "root" $root "shmSize" $g.shmSize "group" $g) | nindent 4 }}
{{- end -}}

{{/*
A Ray cluster spec (RayCluster.spec, RayJob.spec.rayClusterSpec, RayService.spec.rayClusterConfig).
Call with a dict: {"root": $, "cfg": <head/workerGroups/autoscaling values>, "component": "ray-cluster"|"ray-serve"|"ray-job", "rayAddress": ""}.
*/}}
{{- define "rayline.rayClusterSpec" -}}
{{- $root := .root -}}
{{- $cfg := .cfg -}}
{{- $ctx := . -}}
rayVersion: {{ $root.Values.rayVersion | quote }}
authOptions:
  mode: {{ $root.Values.rayAuth.mode }}
  {{- if $root.Values.rayAuth.secretName }}
  secretName: {{ $root.Values.rayAuth.secretName }}
  {{- end }}
enableInTreeAutoscaling: {{ $cfg.autoscaling.enabled }}
{{- if $cfg.autoscaling.enabled }}
autoscalerOptions:
  version: v2
  idleTimeoutSeconds: {{ $cfg.autoscaling.idleTimeoutSeconds }}
  upscalingMode: {{ $cfg.autoscaling.upscalingMode }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  resources:
    {{- toYaml $cfg.autoscaling.resources | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.containerSecurityContext | nindent 4 }}
  env:
    - name: HOME
      value: /tmp/home
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- with $cfg.gcsFaultTolerance }}{{ if .enabled }}
gcsFaultToleranceOptions:
  redisAddress: {{ required "serving.gcsFaultTolerance.redisAddress is required when GCS fault tolerance is enabled" .redisAddress | quote }}
  {{- with .redisPasswordSecret }}
  redisPassword:
    valueFrom:
      secretKeyRef:
        name: {{ . }}
        key: {{ $cfg.gcsFaultTolerance.redisPasswordKey }}
  {{- end }}
  {{- with .externalStorageNamespace }}
  externalStorageNamespace: {{ . | quote }}
  {{- end }}
{{- end }}{{ end }}
{{- if eq .component "ray-cluster" }}
upgradeStrategy:
  type: {{ $cfg.upgradeStrategy }}
{{- end }}
headGroupSpec:
  rayStartParams:
    dashboard-host: "0.0.0.0"
    metrics-export-port: {{ $root.Values.monitoring.rayMetricsPort | quote }}
    {{- with $cfg.head.rayStartParams }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- $headContainer := include "rayline.rayHeadContainer" . }}
  template:
    {{- include "rayline.rayPodTemplate" (dict "root" $root "group" $cfg.head "component" .component "automount" $cfg.autoscaling.enabled "container" $headContainer "rayAddress" .rayAddress) | nindent 4 }}
workerGroupSpecs:
{{- range $cfg.workerGroups }}
  - groupName: {{ .name }}
    replicas: {{ .replicas }}
    minReplicas: {{ .minReplicas }}
    maxReplicas: {{ .maxReplicas }}
    {{- if $cfg.autoscaling.enabled }}
    idleTimeoutSeconds: {{ $cfg.autoscaling.idleTimeoutSeconds }}
    {{- end }}
    rayStartParams:
      metrics-export-port: {{ $root.Values.monitoring.rayMetricsPort | quote }}
      {{- with .rayStartParams }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- $container := printf "name: ray-worker\nresources:\n%s\nports:\n%s" (include "rayline.groupResources" . | indent 2) (include "rayline.rayPorts" (dict "root" $root "component" $ctx.component) | indent 2) }}
    template:
      {{- include "rayline.rayPodTemplate" (dict "root" $root "group" . "component" $ctx.component "extraLabels" (dict "rayline.io/worker-group" .name) "automount" false "container" $container "rayAddress" $ctx.rayAddress) | nindent 6 }}
{{- end }}
{{- end -}}

{{/* The head's Ray container: name, resources and ports (the rest comes from rayline.rayPodTemplate). */}}
{{- define "rayline.rayHeadContainer" -}}
{{- $root := .root -}}
name: ray-head
resources:
  {{- toYaml .cfg.head.resources | nindent 2 }}
ports:
  - name: gcs-server
    containerPort: 6379
  - name: dashboard
    containerPort: 8265
  - name: client
    containerPort: 10001
  {{- if eq .component "ray-serve" }}
  - name: serve
    containerPort: 8000
  {{- end }}
  {{- include "rayline.rayPorts" (dict "root" $root "component" .component) | nindent 2 }}
  - name: as-metrics
    containerPort: {{ $root.Values.monitoring.autoscalerMetricsPort }}
  - name: dash-metrics
    containerPort: {{ $root.Values.monitoring.dashboardMetricsPort }}
{{- end -}}

{{/* MLflow's backend store URI (and the bundled database's password) as env entries. */}}
{{- define "rayline.mlflowDatabaseEnv" -}}
{{- $m := .Values.mlflow -}}
{{- if eq $m.database.type "external" }}
- name: MLFLOW_BACKEND_STORE_URI
  valueFrom:
    secretKeyRef:
      name: {{ required "mlflow.database.external.uriSecret is required when mlflow.database.type is external" $m.database.external.uriSecret }}
      key: {{ $m.database.external.uriKey }}
{{- else }}
- name: MLFLOW_DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $m.database.bundled.passwordSecret }}
      key: password
- name: MLFLOW_BACKEND_STORE_URI
  value: {{ printf "postgresql://%s:$(MLFLOW_DB_PASSWORD)@%s:5432/%s" $m.database.bundled.username (include "rayline.postgresName" .) $m.database.bundled.database | quote }}
{{- end }}
{{- end -}}

{{/* `mlflow db upgrade` against the backend store: the hook Job's and the bundled init container's. */}}
{{- define "rayline.mlflowDbUpgradeContainer" -}}
name: mlflow-db-upgrade
image: {{ include "rayline.mlflowImage" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
command: ["sh", "-c", "exec mlflow db upgrade \"$MLFLOW_BACKEND_STORE_URI\""]
env:
  {{- include "rayline.mlflowDatabaseEnv" . | trim | nindent 2 }}
  - name: HOME
    value: /tmp/home
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
resources:
  {{- toYaml .Values.mlflow.resources | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- end -}}
