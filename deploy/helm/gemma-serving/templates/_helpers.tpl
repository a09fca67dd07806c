{{/* Names and labels. */}}
{{- define "gemma-serving.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gemma-serving.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "gemma-serving.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gemma-serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on the Ray pods and the selectors that pick them (NetworkPolicy, PDBs, monitoring). Not
app.kubernetes.io/name: KubeRay labels Ray pods app.kubernetes.io/name=kuberay (and created-by=kuberay-operator), and
the RayService head Service it switches between clusters selects exactly those values; a pod template that overrides
them (KubeRay lets template labels win) would leave that Service, the router's, without endpoints. */}}
{{- define "gemma-serving.podSelectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: {{ include "gemma-serving.name" . }}
{{- end -}}

{{- define "gemma-serving.labels" -}}
{{ include "gemma-serving.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "gemma-serving.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gemma-serving.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "gemma-serving.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}
{{- end -}}

{{/* Distinct accelerator types the configured services use, sorted, as a JSON list. */}}
{{- define "gemma-serving.acceleratorTypes" -}}
{{- $types := list -}}
{{- range $kind, $svc := .Values.config.services -}}
{{- if and $svc $svc.deployment $svc.deployment.accelerator_type -}}
{{- $types = append $types $svc.deployment.accelerator_type -}}
{{- end -}}
{{- end -}}
{{- toJson (sortAlpha (uniq $types)) -}}
{{- end -}}

{{/* Model names served on one accelerator type (the ai.gke.io/model label), dot-joined. */}}
{{- define "gemma-serving.modelsOn" -}}
{{- $names := list -}}
{{- range $kind, $svc := .root.Values.config.services -}}
{{- if and $svc $svc.deployment (eq (toString $svc.deployment.accelerator_type) $.accelerator) -}}
{{- $names = append $names $svc.model.name -}}
{{- end -}}
{{- end -}}
{{- join "." (sortAlpha (uniq $names)) | trunc 63 | trimSuffix "." | trimSuffix "-" -}}
{{- end -}}

{{/* Router drain: health NOT_SERVING for drain_notice_s, then in-flight RPCs finish within grace_period_s. */}}
{{- define "gemma-serving.drainSeconds" -}}
{{- $r := .Values.config.router -}}
{{- addf (default 2 $r.drain_notice_s) (default 10 $r.grace_period_s) | ceil | int -}}
{{- end -}}

{{/* The Service clients, the Gateway and `helm test` use: the RayService's head Service, which KubeRay creates as
<rayservice>-head-svc and moves to the new RayCluster in the same step as <rayservice>-serve-svc, once that cluster's
Serve applications are all RUNNING (rayservice.yaml headGroupSpec.headService says why not the serve Service). */}}
{{- define "gemma-serving.routerService" -}}
{{- printf "%s-head-svc" (include "gemma-serving.fullname" .) -}}
{{- end -}}

{{/* Seconds KubeRay keeps the old RayCluster after traffic moved (rayClusterDeletionDelaySeconds): by default long
enough for a stream admitted just before the switch to run to config.router.max_request_seconds (the router's cap on
every request), plus the router's drain. */}}
{{- define "gemma-serving.clusterDeletionDelaySeconds" -}}
{{- $r := .Values.config.router -}}
{{- if ne .Values.ray.clusterDeletionDelaySeconds nil -}}
{{- .Values.ray.clusterDeletionDelaySeconds | int -}}
{{- else -}}
{{- add ($r.max_request_seconds | default 600 | ceil | int) (include "gemma-serving.drainSeconds" . | int) -}}
{{- end -}}
{{- end -}}

{{/* Ray CPU/GPU/custom resources for rayStartParams.resources: KubeRay wants a quoted JSON string. */}}
{{- define "gemma-serving.rayResources" -}}
{{- toJson . | quote -}}
{{- end -}}

{{/* Pod-level settings shared by the head and every worker group. */}}
{{/* Args: root, models (whether the pod mounts the model storage), head (the head pod). */}}
{{- define "gemma-serving.podAnnotations" -}}
{{- if and .models (eq .root.Values.modelStorage.type "gcsFuse") }}
gke-gcsfuse/volumes: "true"
gke-gcsfuse/cpu-limit: "0"
gke-gcsfuse/memory-limit: "0"
gke-gcsfuse/ephemeral-storage-limit: "0"
{{- end }}
{{- if and .head .root.Values.ray.newClusterOnConfigChange }}
gemma-serving/config-sha256: {{ toJson .root.Values.config | sha256sum }}
{{- end }}
{{- with .root.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Args: root, shmSize, models. */}}
{{- define "gemma-serving.volumes" -}}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shmSize }}
{{- $ms := .root.Values.modelStorage }}
{{- if not .models }}
{{- else if eq $ms.type "gcsFuse" }}
- name: models
  csi:
    driver: gcsfuse.csi.storage.gke.io
    readOnly: {{ ne (include "gemma-serving.storageWritable" .) "true" }}
    volumeAttributes:
      bucketName: {{ required "modelStorage.gcsFuse.bucket is required" $ms.gcsFuse.bucket | quote }}
      mountOptions: {{ $ms.gcsFuse.mountOptions | quote }}
{{- else if eq $ms.type "pvc" }}
- name: models
  persistentVolumeClaim:
    claimName: {{ required "modelStorage.pvc.claimName is required" $ms.pvc.claimName }}
    readOnly: {{ ne (include "gemma-serving.storageWritable" .) "true" }}
{{- else if eq $ms.type "huggingFace" }}
- name: models
  emptyDir:
    sizeLimit: {{ $ms.huggingFace.sizeLimit }}
{{- end }}
{{- end -}}

{{/* Args: root, models. */}}
{{- define "gemma-serving.volumeMounts" -}}
- name: dshm
  mountPath: /dev/shm
{{- if and .models (ne .root.Values.modelStorage.type "none") }}
- name: models
  mountPath: {{ .root.Values.modelStorage.mountPath }}
  readOnly: {{ and (ne .root.Values.modelStorage.type "huggingFace") (ne (include "gemma-serving.storageWritable" .) "true") }}
{{- end }}
{{- end -}}

{{- define "gemma-serving.env" -}}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
{{- with .Values.config.telemetry }}
{{- with .otlp_endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- if eq .Values.modelStorage.type "huggingFace" }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.modelStorage.huggingFace.secretName }}
      key: {{ .Values.modelStorage.huggingFace.secretKey }}
{{- end }}
{{- end -}}

{{/* Downloads the Hugging Face checkpoints before Ray starts (modelStorage.type=huggingFace). */}}
{{- define "gemma-serving.initContainers" -}}
{{- $ms := .Values.modelStorage -}}
{{- if eq $ms.type "huggingFace" }}
initContainers:
  - name: download-models
    image: {{ include "gemma-serving.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command: ["/bin/sh", "-c"]
    args:
      - |
        set -e
        {{- range $ms.huggingFace.repos }}
        hf download {{ .repo }} --local-dir {{ $ms.mountPath }}/{{ .dir }}
        {{- end }}
    env:
      - name: HF_TOKEN
        valueFrom:
          secretKeyRef:
            name: {{ $ms.huggingFace.secretName }}
            key: {{ $ms.huggingFace.secretKey }}
    volumeMounts:
      - name: models
        mountPath: {{ $ms.mountPath }}
    resources:
      requests: {cpu: "1", memory: 2Gi}
      limits: {cpu: "2", memory: 4Gi}
{{- end }}
{{- end -}}

{{/* Pod spec fields shared by every Ray pod. Args: root, models. */}}
{{- define "gemma-serving.podCommon" -}}
serviceAccountName: {{ include "gemma-serving.serviceAccountName" .root }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .models }}
{{- include "gemma-serving.initContainers" .root }}
{{- end }}
{{- end -}}

{{/* "true" when a service has no accelerator_type: its replicas may land on the head, which then needs the models. */}}
{{- define "gemma-serving.headHostsModels" -}}
{{- $any := false -}}
{{- range $kind, $svc := .Values.config.services -}}
{{- if and $svc (not ($svc.deployment).accelerator_type) -}}
{{- $any = true -}}
{{- end -}}
{{- end -}}
{{- if include "gemma-serving.adapterRegistry" . -}}
{{- $any = true -}}{{/* the router reads and writes the adapter registry (templates/_finetune.tpl) */}}
{{- end -}}
{{- $any -}}
{{- end -}}

{{/* The Serve config: our config under args.config of the app builder, with the router pinned to the head pod
(config router.resources asks for the gemma-router resource the head advertises), where the router Service points. */}}
{{- define "gemma-serving.serveConfig" -}}
{{- $config := deepCopy .Values.config -}}
{{- $router := $config.router | default dict -}}
{{- $_ := set $router "resources" (merge (deepCopy ($router.resources | default dict)) (dict "gemma-router" 0.001)) -}}
{{- $_ = set $config "router" $router -}}
{{- $app := dict "name" .Values.config.app_name "import_path" "gemma_serving.app:app_builder" -}}
{{- $_ = set $app "args" (dict "config" $config) -}}
{{- toYaml (dict "applications" (list $app)) -}}
{{- end -}}

{{/* Ray health, as KubeRay's default probes check it: raylet and GCS answer. Not the router's gRPC health: KubeRay
submits serveConfigV2 only once the head pod is Ready, so a probe waiting for the app would deadlock. */}}
{{- define "gemma-serving.rayHealthProbe" -}}
exec:
  command:
    - /bin/sh
    - -c
    - wget -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success
      {{- if .head }} && wget -T 2 -q -O- http://localhost:8265/api/gcs_healthz | grep success{{ end }}
timeoutSeconds: 5
{{- end -}}
