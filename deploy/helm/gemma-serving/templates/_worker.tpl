{{/* Pod template of one Ray worker group: args root, group (values of the group), accelerator ("" = CPU only). */}}
{{- define "gemma-serving.workerPod" -}}
{{- $root := .root -}}
{{- $group := .group -}}
{{- $models := include "gemma-serving.modelsOn" (dict "root" $root "accelerator" .accelerator) -}}
{{- $args := dict "root" $root "models" true "shmSize" $group.shmSize -}}
metadata:
  labels:
    {{- include "gemma-serving.podSelectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: worker
    ai.gke.io/inference-server: vllm
    {{- with $models }}
    ai.gke.io/model: {{ . }}
    {{- end }}
    {{- with $root.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with include "gemma-serving.podAnnotations" $args }}
  annotations:
    {{- . | trim | nindent 4 }}
  {{- end }}
spec:
  {{- include "gemma-serving.podCommon" $args | nindent 2 }}
  # When a whole cluster goes (the old one after an upgrade), the head's preStop drains the router while Serve stops
  # the replicas gracefully (graceful_shutdown_timeout_s, 30 s in app.py): workers keep Ray up that long before
  # `ray stop`, so the streams the draining router still carries can finish.
  {{- $drain := include "gemma-serving.drainSeconds" $root | int }}
  terminationGracePeriodSeconds: {{ max 60 (add (max $drain 30) 15) }}
  {{- with .accelerator }}
  nodeSelector:
    cloud.google.com/gke-accelerator: {{ . }}
  tolerations:
    - key: nvidia.com/gpu
      operator: Exists
      effect: NoSchedule
  {{- end }}
  containers:
    - name: ray-worker
      image: {{ include "gemma-serving.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      ports:
        - {name: metrics, containerPort: 8080}
      env:
        {{- include "gemma-serving.env" $root | nindent 8 }}
      resources:
        {{- $res := dict "cpu" ($group.resources.cpu | toString) "memory" $group.resources.memory }}
        {{- if .accelerator }}
        {{- $_ := set $res "nvidia.com/gpu" ($group.gpusPerNode | toString) }}
        {{- end }}
        requests:
          {{- toYaml $res | nindent 10 }}
        limits:
          {{- toYaml $res | nindent 10 }}
      startupProbe:
        {{- include "gemma-serving.rayHealthProbe" (dict "head" false) | nindent 8 }}
        periodSeconds: 5
        failureThreshold: 120
      livenessProbe:
        {{- include "gemma-serving.rayHealthProbe" (dict "head" false) | nindent 8 }}
        periodSeconds: 15
        failureThreshold: 8
      readinessProbe:
        {{- include "gemma-serving.rayHealthProbe" (dict "head" false) | nindent 8 }}
        periodSeconds: 10
        failureThreshold: 3
      lifecycle:
        preStop:
          exec:
            command: ["/bin/sh", "-c", "sleep {{ max $drain 30 }}; ray stop"]
      volumeMounts:
        {{- include "gemma-serving.volumeMounts" $args | nindent 8 }}
  volumes:
    {{- include "gemma-serving.volumes" $args | nindent 4 }}
{{- end -}}
