{{/* Names and labels. */}}
{{- define "pdserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's object name prefix; pool objects are "<fullname>-<pool>" (the kubernetes
actuator's deployment_prefix), so it is kept short enough for a pool name after it. */}}
{{- define "pdserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 20 | trimSuffix "-" -}}
{{- else if contains (include "pdserve.name" .) .Release.Name -}}
{{- .Release.Name | trunc 20 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "pdserve.name" .) | trunc 20 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pdserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pdserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pdserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "pdserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "pdserve.gatewayName" -}}
{{- printf "%s-gateway" (include "pdserve.fullname" .) -}}
{{- end -}}

{{- define "pdserve.serviceAccountName" -}}
{{- include "pdserve.gatewayName" . -}}
{{- end -}}

{{- define "pdserve.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* "true" when the pools run vLLM's NixlConnector: any pool but a unified one in a standard
profile (pdserve/workers/vllm_command.py decides the same for local workers). */}}
{{- define "pdserve.nixl" -}}
{{- if or (eq (default "disaggregated" .root.Values.profile.routing.mode) "disaggregated") (ne .pool.role "both") -}}
true
{{- end -}}
{{- end -}}

{{/* UCX transports: the profile's, else tcp for the `tcp` backend, else UCX's own choice. */}}
{{- define "pdserve.ucxTls" -}}
{{- $kv := default dict .Values.profile.kv_transfer -}}
{{- if $kv.ucx_tls -}}
{{- $kv.ucx_tls -}}
{{- else if eq (default "nixl" $kv.backend) "tcp" -}}
tcp
{{- end -}}
{{- end -}}

{{/* The serving profile the gateway loads: the values' profile block, each pool's profile keys,
and the kubernetes actuator pointed at this release's Deployments. */}}
{{- define "pdserve.profile" -}}
{{- $pools := dict -}}
{{- range $name, $pool := .Values.pools -}}
{{- $spec := pick $pool "role" "accelerator" "replicas" "scaling" -}}
{{- $_ := set $spec "tensor_parallel_size" (default 1 $pool.tensorParallelSize) -}}
{{- $_ := set $pools $name $spec -}}
{{- end -}}
{{- $gateway := merge (dict "host" "0.0.0.0") (deepCopy (default dict .Values.profile.gateway)) -}}
{{- $kubernetes := dict "namespace" .Release.Namespace "deployment_prefix" (include "pdserve.fullname" .) "pool_label" "pdserve.io/pool" "port" .Values.vllm.port "manage_replicas" (eq .Values.autoscaling.mode "pdserve") -}}
{{- $actuator := dict "kind" "kubernetes" "kubernetes" $kubernetes -}}
{{- $profile := merge (dict "pools" $pools "gateway" $gateway "actuator" $actuator) (deepCopy .Values.profile) -}}
{{- toYaml $profile -}}
{{- end -}}

{{/* Replicas a pool's workload starts with; on upgrade an autoscaler's count is kept. Args:
dict "root" $ "name" <object name> "pool" <pool values> "kind" <Deployment|LeaderWorkerSet>. */}}
{{- define "pdserve.poolReplicas" -}}
{{- $replicas := default dict .pool.replicas -}}
{{- $start := 1 -}}
{{- if hasKey $replicas "min" -}}{{- $start = $replicas.min -}}{{- end -}}
{{- if not (kindIs "invalid" $replicas.initial) -}}{{- $start = $replicas.initial -}}{{- end -}}
{{- if ne .root.Values.autoscaling.mode "none" -}}
{{- $api := ternary "leaderworkerset.x-k8s.io/v1" "apps/v1" (eq .kind "LeaderWorkerSet") -}}
{{- $existing := lookup $api .kind .root.Release.Namespace .name -}}
{{- if and $existing (hasKey (default dict $existing.spec) "replicas") -}}
{{- $start = $existing.spec.replicas -}}
{{- end -}}
{{- end -}}
{{- int $start -}}
{{- end -}}

{{/* preStop: give the gateway a moment to see the pod terminating, then wait until vLLM has no
running or waiting request (bounded by the pool's drain timeout) before SIGTERM. */}}
{{- define "pdserve.drainScript" -}}
import re, time, urllib.request
deadline = time.monotonic() + {{ .drainSeconds }}
time.sleep(5)
while time.monotonic() < deadline:
    try:
        text = urllib.request.urlopen("http://127.0.0.1:{{ .port }}/metrics", timeout=5).read().decode()
    except OSError:
        break
    busy = sum(float(v) for v in re.findall(r"^vllm:num_requests_(?:running|waiting)\{[^}]*\} (\S+)", text, re.M))
    if busy == 0:
        break
    time.sleep(2)
{{- end -}}

{{/* vLLM server flags for one pool, in the order pdserve/workers/vllm_command.py composes them
for local workers (a test holds the two equal). Args: dict "root" $ "name" <pool> "pool" <values>. */}}
{{- define "pdserve.vllmArgs" -}}
{{- $v := .root.Values -}}
{{- $model := $v.profile.model -}}
{{- $engine := $v.profile.engine -}}
{{- $kv := default dict $v.profile.kv_transfer -}}
- --model
- {{ include "pdserve.modelPath" .root | quote }}
- --served-model-name
- {{ $model.name | quote }}
- --host
- "0.0.0.0"
- --port
- {{ $v.vllm.port | quote }}
- --dtype
- {{ default "float32" $model.dtype | quote }}
- --max-model-len
- {{ int (default 2048 $model.max_model_len) | quote }}
- --max-num-seqs
- {{ int (default 64 $engine.max_num_seqs) | quote }}
- --tensor-parallel-size
- {{ int (default 1 .pool.tensorParallelSize) | quote }}
{{- if eq (default "cpu" $engine.device) "cuda" }}
- --gpu-memory-utilization
- {{ default 0.9 $engine.gpu_memory_utilization | toString | quote }}
{{- else }}
- --block-size
- "128"
- --kv-cache-memory-bytes
- {{ mulf (default 1 $engine.kv_cache_gib) 1073741824 | int64 | toString | quote }}
{{- end }}
{{- if $engine.max_num_batched_tokens }}
- --max-num-batched-tokens
- {{ int $engine.max_num_batched_tokens | quote }}
{{- end }}
{{- if (hasKey $engine "enforce_eager" | ternary $engine.enforce_eager true) }}
- --enforce-eager
{{- end }}
{{- if include "pdserve.nixl" . }}
{{- $lease := 30 }}{{ if hasKey $kv "block_lease_s" }}{{ $lease = $kv.block_lease_s }}{{ end }}
{{- $extra := dict "kv_lease_duration" (max 1 (ceil $lease | int)) }}
{{- $config := dict "kv_connector" "NixlConnector" "kv_role" "kv_both" "kv_buffer_device" (default "cpu" $kv.buffer_device) "kv_load_failure_policy" (default "recompute" $kv.kv_load_failure_policy) "kv_connector_extra_config" $extra }}
- --kv-transfer-config
- {{ toJson $config | quote }}
{{- end }}
{{- range (default list $engine.extra_args) }}
- {{ . | quote }}
{{- end }}
{{- if gt (int (default 1 .pool.nodes)) 1 }}
- --pipeline-parallel-size
- {{ int .pool.nodes | quote }}
- --distributed-executor-backend
- ray
{{- end }}
{{- with $v.vllm.loadFormat }}
- --load-format
- {{ . | quote }}
{{- end }}
{{- range (default list .pool.extraArgs) }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Where vLLM loads the model: a seeded checkpoint's directory in the model cache, or the
profile's path (which must lie inside the model cache). */}}
{{- define "pdserve.modelPath" -}}
{{- $source := .Values.profile.model.source -}}
{{- if has $source (list "tiny" "small") -}}
{{- printf "%s/%s" .Values.modelCache.mountPath $source -}}
{{- else -}}
{{- $source -}}
{{- end -}}
{{- end -}}

{{- define "pdserve.modelCacheVolume" -}}
- name: model-cache
{{- if eq .Values.modelCache.type "hostPath" }}
  hostPath:
    path: {{ .Values.modelCache.hostPath }}
    type: DirectoryOrCreate
{{- else }}
  persistentVolumeClaim:
    claimName: {{ .Values.modelCache.claimName }}
{{- end }}
{{- end -}}
