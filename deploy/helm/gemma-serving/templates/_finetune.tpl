{{/* Fine-tuning and the live adapter registry (templates/finetune-rayjob.yaml, README "Fine-tuning"). */}}

{{/* The text model's adapter_registry (config.services.text.model.adapter_registry), or "". */}}
{{- define "gemma-serving.adapterRegistry" -}}
{{- ((((.Values.config).services).text).model).adapter_registry | default "" -}}
{{- end -}}

{{/* "true" when a pod writes to the model storage: fine-tuning pods (arg writable), and every Ray pod once the text
model has an adapter registry (routers write registrations there). Args: root, writable (optional). */}}
{{- define "gemma-serving.storageWritable" -}}
{{- or .writable (ne (include "gemma-serving.adapterRegistry" .root) "") -}}
{{- end -}}

{{/* Name of the RayJob (one per adapter name: a new name is a new job). */}}
{{- define "gemma-serving.finetuneName" -}}
{{- $adapter := .Values.finetune.adapter | lower | replace "_" "-" | replace "." "-" -}}
{{- printf "%s-ft-%s" (include "gemma-serving.fullname" .) $adapter | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gemma-serving.finetuneSelectorLabels" -}}
app.kubernetes.io/name: {{ include "gemma-serving.name" . }}-finetune
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* FinetuneSettings for the job: the user's finetune.settings with the workers placed on the job's GPU group. */}}
{{- define "gemma-serving.finetuneSettings" -}}
{{- $ft := .Values.finetune -}}
{{- $settings := deepCopy ($ft.settings | default dict) -}}
{{- $workers := merge (dict "num_workers" (mul $ft.workers.replicas $ft.workers.gpusPerWorker) "use_gpu" true
  "accelerator_type" $ft.accelerator "storage_path" (printf "%s/finetune-runs" .Values.modelStorage.mountPath))
  ($settings.workers | default dict) -}}
{{- $_ := set $settings "workers" $workers -}}
{{- toYaml $settings -}}
{{- end -}}

{{/* Pod template of the fine-tuning cluster. Args: root, head (bool). */}}
{{- define "gemma-serving.finetunePod" -}}
{{- $root := .root -}}
{{- $ft := $root.Values.finetune -}}
{{- $group := ternary $ft.head $ft.workers .head -}}
{{- $args := dict "root" $root "models" true "shmSize" $group.shmSize "writable" true -}}
metadata:
  labels:
    {{- include "gemma-serving.finetuneSelectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: finetune
    {{- with $root.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with include "gemma-serving.podAnnotations" $args }}
  annotations:
    {{- . | trim | nindent 4 }}
  {{- end }}
spec:
  {{- include "gemma-serving.podCommon" $args | nindent 2 }}
  {{- if not .head }}
  nodeSelector:
    cloud.google.com/gke-accelerator: {{ $ft.accelerator }}
  tolerations:
    - key: nvidia.com/gpu
      operator: Exists
      effect: NoSchedule
  {{- else }}
  {{- with $root.Values.head.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- end }}
  containers:
    - name: {{ ternary "ray-head" "ray-worker" .head }}
      image: {{ include "gemma-serving.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      {{- if .head }}
      ports:
        - {name: gcs-server, containerPort: 6379}
        - {name: dashboard, containerPort: 8265}
        - {name: client, containerPort: 10001}
      {{- end }}
      env:
        {{- include "gemma-serving.env" $root | nindent 8 }}
        {{- if and .head $ft.adminKeySecret.name }}
        - name: GEMMA_API_KEY
          valueFrom:
            secretKeyRef:
              name: {{ $ft.adminKeySecret.name }}
              key: {{ $ft.adminKeySecret.key }}
        {{- end }}
      resources:
        {{- $res := dict "cpu" ($group.resources.cpu | toString) "memory" $group.resources.memory }}
        {{- if not .head }}
        {{- $_ := set $res "nvidia.com/gpu" ($ft.workers.gpusPerWorker | toString) }}
        {{- end }}
        requests:
          {{- toYaml $res | nindent 10 }}
        limits:
          {{- toYaml $res | nindent 10 }}
      volumeMounts:
        {{- include "gemma-serving.volumeMounts" $args | nindent 8 }}
        {{- if .head }}
        - name: finetune-config
          mountPath: /etc/gemma-finetune
          readOnly: true
        {{- end }}
  volumes:
    {{- include "gemma-serving.volumes" $args | nindent 4 }}
    {{- if .head }}
    - name: finetune-config
      configMap:
        name: {{ include "gemma-serving.finetuneName" $root }}
    {{- end }}
{{- end -}}
