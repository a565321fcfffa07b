{{/* The pod spec of one pool's workers. Args: dict "root" $ "name" <pool> "pool" <values>
"mode" "single" | "leader" | "worker" (LeaderWorkerSet roles for pools that span nodes). */}}
{{- define "pdserve.poolPodSpec" -}}
{{- $v := .root.Values -}}
{{- $pool := .pool -}}
{{- $accName := default "cpu" $pool.accelerator -}}
{{- $acc := required (printf "pools.%s.accelerator %q: add it under accelerators" .name $accName) (get $v.accelerators $accName) -}}
{{- $sim := eq (default "vllm" $v.profile.engine.kind) "sim" -}}
{{- $seed := and (not $sim) (has $v.profile.model.source (list "tiny" "small")) -}}
{{- $scaling := default dict $pool.scaling -}}
{{- $drain := 60 -}}{{- if hasKey $scaling "drain_timeout_s" -}}{{- $drain = $scaling.drain_timeout_s -}}{{- end -}}
{{- $image := ternary $v.images.gateway (ternary $v.images.vllmCuda $v.images.vllmCpu (eq (default "cpu" $v.profile.engine.device) "cuda")) $sim -}}
{{- $resources := deepCopy (default dict $pool.resources) -}}
{{- if and $acc.gpuResource (not $sim) -}}
{{- $limits := default dict (get $resources "limits") -}}
{{- $_ := set $limits $acc.gpuResource (int (default 1 $pool.tensorParallelSize)) -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
terminationGracePeriodSeconds: {{ add (ceil $drain | int) 30 }}
{{- if $seed }}
initContainers:
  # Writes pdserve's seeded checkpoint into the model cache once (nothing is downloaded).
  - name: seed-model
    image: {{ include "pdserve.image" $v.images.gateway | quote }}
    imagePullPolicy: {{ $v.images.gateway.pullPolicy }}
    command: ["pdserve", "model", {{ $v.profile.model.source | quote }}, "--out", {{ include "pdserve.modelPath" .root | quote }}]
    volumeMounts:
      - name: model-cache
        mountPath: {{ $v.modelCache.mountPath }}
{{- end }}
containers:
  - name: worker
    image: {{ include "pdserve.image" $image | quote }}
    imagePullPolicy: {{ $image.pullPolicy }}
    {{- if eq .mode "worker" }}
    command: ["sh", "-c", "ray start --address=$(LWS_LEADER_ADDRESS):6379 --block"]
    {{- else if $sim }}
    # The profile's engine.kind is sim: pdserve's simulated worker serves this pool.
    command: ["pdserve", "worker", "--profile", "/etc/pdserve/profile.yaml", "--pool", {{ .name | quote }},
              "--host", "0.0.0.0", "--port", {{ $v.vllm.port | quote }},
              "--side-channel-port", {{ $v.vllm.nixlSideChannelPort | quote }}]
    {{- else if eq .mode "leader" }}
    command: ["sh", "-c", "ray start --head --port=6379 && exec python3 -m vllm.entrypoints.openai.api_server \"$@\"", "--"]
    args:
      {{- include "pdserve.vllmArgs" . | nindent 6 }}
    {{- else }}
    command: ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    args:
      {{- include "pdserve.vllmArgs" . | nindent 6 }}
    {{- end }}
    env:
      - name: VLLM_NO_USAGE_STATS
        value: "1"
      - name: DO_NOT_TRACK
        value: "1"
      - name: HF_HUB_OFFLINE
        value: "1"
      {{- if include "pdserve.nixl" . }}
      # NIXL's handshake side channel listens on the pod IP; the decode pod reads the prefill
      # pod's address from kv_transfer_params and pulls the blocks from it.
      - name: VLLM_NIXL_SIDE_CHANNEL_HOST
        valueFrom:
          fieldRef:
            fieldPath: status.podIP
      - name: VLLM_NIXL_SIDE_CHANNEL_PORT
        value: {{ $v.vllm.nixlSideChannelPort | quote }}
      {{- end }}
      {{- with include "pdserve.ucxTls" .root }}
      - name: UCX_TLS
        value: {{ . | quote }}
      {{- end }}
      {{- with $pool.env }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    ports:
      - name: http
        containerPort: {{ $v.vllm.port }}
        protocol: TCP
      {{- if include "pdserve.nixl" . }}
      - name: nixl
        containerPort: {{ $v.vllm.nixlSideChannelPort }}
        protocol: TCP
      {{- end }}
    {{- if ne .mode "worker" }}
    startupProbe:
      httpGet: {path: /health, port: http}
      periodSeconds: 10
      failureThreshold: {{ div $v.vllm.startupTimeoutSeconds 10 }}
    readinessProbe:
      httpGet: {path: /health, port: http}
      periodSeconds: 5
      failureThreshold: 2
    livenessProbe:
      httpGet: {path: /health, port: http}
      periodSeconds: 15
      failureThreshold: 4
    lifecycle:
      preStop:
        exec:
          command:
            - python3
            - -c
            - {{ include "pdserve.drainScript" (dict "drainSeconds" (ceil $drain | int) "port" $v.vllm.port) | quote }}
    {{- end }}
    {{- with $resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    volumeMounts:
      - name: model-cache
        mountPath: {{ $v.modelCache.mountPath }}
        readOnly: {{ $v.modelCache.readOnly }}
      - name: dshm
        mountPath: /dev/shm
      {{- if $sim }}
      - name: profile
        mountPath: /etc/pdserve
        readOnly: true
      {{- end }}
{{- if and $acc.nodeLabel (not $sim) }}
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - key: {{ $acc.nodeLabel | quote }}
              operator: In
              values:
                {{- toYaml $acc.nodeLabelValues | nindent 16 }}
{{- end }}
{{- with $pool.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $tolerations := concat (ternary list (default list $acc.tolerations) $sim) (default list $pool.tolerations) }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  {{- include "pdserve.modelCacheVolume" .root | nindent 2 }}
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $v.vllm.shmSize }}
  {{- if $sim }}
  - name: profile
    configMap:
      name: {{ include "pdserve.gatewayName" .root }}-profile
  {{- end }}
{{- end -}}
