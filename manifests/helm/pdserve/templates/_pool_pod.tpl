{{/* The pod spec of one pool's workers. Args: dict "root" $ "name" <pool> "pool" <values>
"mode" "single" | "leader" | "worker" (LeaderWorkerSet roles for pools that span nodes). */}}
{{- define "pdserve.poolPodSpec" -}}
{{- $v := .root.Values -}}
{{- $pool := .pool -}}
{{- $accName := default "cpu" $pool.accelerator -}}
{{- $acc := required (printf "pools.%s.accelerator %q: add it under accelerators" .name $accName) (get $v.accelerators $accName) -}}
{{- $sim := eq (default "vllm" $v.profile.engine.kind) "sim" -}}
{{- $source := include "pdserve.poolSource" . -}}
{{- $seed := and (not $sim) (has $source (include "pdserve.seeds" .root | fromJsonArray)) -}}
{{- $adapterSeeds := ternary list (include "pdserve.poolAdapterSeeds" . | fromJsonArray) $sim -}}
{{- $server := dict -}}
{{- if not $sim -}}{{- $server = include "pdserve.vllmServer" . | fromJson -}}{{- end -}}
{{- $scaling := default dict $pool.scaling -}}
{{- $drain := 60 -}}{{- if hasKey $scaling "drain_timeout_s" -}}{{- $drain = $scaling.drain_timeout_s -}}{{- end -}}
{{- $image := ternary $v.images.gateway (ternary $v.images.vllmCuda $v.images.vllmCpu (eq (default "cpu" $v.profile.engine.device) "cuda")) $sim -}}
{{- $resources := deepCopy (default dict $pool.resources) -}}
{{- if and $acc.gpuResource (not $sim) -}}
{{- $limits := default dict (get $resources "limits") -}}
{{- $_ := set $limits $acc.gpuResource (int (default 1 $pool.tensorParallelSize)) -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- $containerSecurity := include "pdserve.orDefault" (dict "values" $pool "key" "securityContext" "default" "pdserve.restrictedContainer") }}
terminationGracePeriodSeconds: {{ add (ceil $drain | int) 30 }}
{{- include "pdserve.podSettings" (dict "root" .root "settings" $pool) }}
{{- if or $seed $adapterSeeds }}
initContainers:
{{- end }}
{{- if $seed }}
  # Writes the seeded checkpoint this pool's model loads into the model cache once (nothing
  # is downloaded).
  - name: seed-model
    image: {{ include "pdserve.image" $v.images.gateway | quote }}
    imagePullPolicy: {{ $v.images.gateway.pullPolicy }}
    command: ["pdserve", "model", {{ $source | quote }}, "--out", {{ printf "%s/%s" $v.modelCache.mountPath $source | quote }}]
    securityContext:
      {{- $containerSecurity | nindent 6 }}
    volumeMounts:
      - name: model-cache
        mountPath: {{ $v.modelCache.mountPath }}
{{- end }}
{{- with $adapterSeeds }}
  # Writes the seeded LoRA adapters of this pool's model into the model cache once, where
  # --lora-modules and the gateway's on-demand loads name them (<mountPath>/adapters/...).
  - name: seed-adapters
    image: {{ include "pdserve.image" $v.images.gateway | quote }}
    imagePullPolicy: {{ $v.images.gateway.pullPolicy }}
    command:
      {{- toYaml (concat (list "python3" "-m" "pdserve.workers.adapters") .) | nindent 6 }}
    env:
      - name: PDSERVE_CACHE_DIR
        value: {{ $v.modelCache.mountPath | quote }}
    securityContext:
      {{- $containerSecurity | nindent 6 }}
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
    # The vLLM server (as `pdserve render` wrote it) after the head of the Ray cluster.
    command: ["sh", "-c", "ray start --head --port=6379 && exec \"$@\"", "--"]
    args:
      {{- toYaml (concat $server.command $server.args) | nindent 6 }}
    {{- else }}
    # The vLLM server, verbatim as `pdserve render` wrote it (pdserve/workers/vllm_command.py).
    command:
      {{- toYaml $server.command | nindent 6 }}
    args:
      {{- toYaml $server.args | nindent 6 }}
    {{- end }}
    env:
      # First, so that the server's env below may name it: NIXL's handshake side channel
      # listens on the pod IP, where a decode pod pulls the prefill pod's blocks.
      - name: POD_IP
        valueFrom:
          fieldRef:
            fieldPath: status.podIP
      - name: HF_HUB_OFFLINE
        value: "1"
      # Caches (torch compile, vLLM) land under HOME, writable by the non-root user.
      - name: HOME
        value: /tmp
      # Only the gateway holds this key: vLLM refuses /v1 calls without it.
      {{- include "pdserve.workerKeyEnv" .root | nindent 6 }}
      {{- with $server.env }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
      {{- with $pool.env }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    ports:
      - name: http
        containerPort: {{ $v.vllm.port }}
        protocol: TCP
      {{- $nixl := ternary (toString $v.vllm.nixlSideChannelPort) "" $sim }}
      {{- range (default list $server.env) }}
      {{- if eq .name "VLLM_NIXL_SIDE_CHANNEL_PORT" }}{{ $nixl = .value }}{{ end }}
      {{- end }}
      {{- with $nixl }}
      - name: nixl
        containerPort: {{ int . }}
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
    securityContext:
      {{- $containerSecurity | nindent 6 }}
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
      {{- with $pool.extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
{{- /* The accelerator owns the required node affinity; the pool's affinity adds the rest. */}}
{{- $affinity := deepCopy (default dict $pool.affinity) }}
{{- if and $acc.nodeLabel (not $sim) }}
{{- $node := deepCopy (default dict $affinity.nodeAffinity) }}
{{- if hasKey $node "requiredDuringSchedulingIgnoredDuringExecution" }}
{{- fail (printf "pools.%s.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution: the accelerator %q sets it; use nodeSelector or preferredDuringSchedulingIgnoredDuringExecution" .name $accName) }}
{{- end }}
{{- $term := dict "matchExpressions" (list (dict "key" $acc.nodeLabel "operator" "In" "values" $acc.nodeLabelValues)) }}
{{- $_ := set $node "requiredDuringSchedulingIgnoredDuringExecution" (dict "nodeSelectorTerms" (list $term)) }}
{{- $_ := set $affinity "nodeAffinity" $node }}
{{- end }}
{{- with $affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
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
      sizeLimit: {{ default $v.vllm.shmSize $pool.shmSize }}
  {{- if $sim }}
  - name: profile
    configMap:
      name: {{ include "pdserve.gatewayName" .root }}-profile
  {{- end }}
  {{- with $pool.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}
