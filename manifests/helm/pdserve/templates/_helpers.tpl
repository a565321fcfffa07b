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

{{/* The serving profile the gateway loads: the values' profile block, each pool's profile keys,
and the kubernetes actuator pointed at this release's Deployments. */}}
{{- define "pdserve.profile" -}}
{{- $pools := dict -}}
{{- range $name, $pool := .Values.pools -}}
{{- $spec := pick $pool "role" "model" "accelerator" "replicas" "scaling" "engine" -}}
{{- $_ := set $spec "tensor_parallel_size" (default 1 $pool.tensorParallelSize) -}}
{{- $_ := set $pools $name $spec -}}
{{- end -}}
{{- $gateway := merge (dict "host" "0.0.0.0") (deepCopy (default dict .Values.profile.gateway)) -}}
{{- $kubernetes := dict "namespace" .Release.Namespace "deployment_prefix" (include "pdserve.fullname" .) "pool_label" "pdserve.io/pool" "port" .Values.vllm.port "manage_replicas" (eq .Values.autoscaling.mode "pdserve") -}}
{{- $election := default dict .Values.gateway.leaderElection -}}
{{- $_ := set $kubernetes "lease_name" (include "pdserve.leaseName" .) -}}
{{- $_ := set $kubernetes "pod_labels" (dict "app.kubernetes.io/instance" .Release.Name) -}}
{{- $_ := set $kubernetes "lease_duration_s" (int (default 15 $election.leaseDurationSeconds)) -}}
{{- $_ := set $kubernetes "lease_retry_s" (default 2 $election.retryPeriodSeconds) -}}
{{- $actuator := dict "kind" "kubernetes" "kubernetes" $kubernetes -}}
{{- $profile := merge (dict "pools" $pools "gateway" $gateway "actuator" $actuator) (deepCopy .Values.profile) -}}
{{- toYaml $profile -}}
{{- end -}}

{{/* Replicas a pool's workload is created with, rendered only under autoscaling.mode none:
when an autoscaler owns the count the chart leaves `spec.replicas` out, so neither an upgrade
nor a GitOps sync resets it. Args: the pool's values. */}}
{{- define "pdserve.poolReplicas" -}}
{{- $replicas := default dict .replicas -}}
{{- $start := 1 -}}
{{- if hasKey $replicas "min" -}}{{- $start = $replicas.min -}}{{- end -}}
{{- if not (kindIs "invalid" $replicas.initial) -}}{{- $start = $replicas.initial -}}{{- end -}}
{{- int $start -}}
{{- end -}}

{{/* Pod Security "restricted" (pdserve/helm/values.py holds the same defaults; a test keeps
them equal): a pod or container that does not set its own gets these. */}}
{{- define "pdserve.restrictedPod" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "pdserve.gatewayStrategy" -}}
type: RollingUpdate
rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
{{- end -}}

{{- define "pdserve.restrictedContainer" -}}
allowPrivilegeEscalation: false
capabilities: {drop: [ALL]}
{{- end -}}

{{/* `.values.<.key>` when set, else the named template's default. Args: dict "values" <map>
"key" <key> "default" <template name>; a YAML mapping. */}}
{{- define "pdserve.orDefault" -}}
{{- if hasKey .values .key -}}
{{- toYaml (get .values .key) -}}
{{- else -}}
{{- include .default . -}}
{{- end -}}
{{- end -}}

{{/* The pod-level escape hatches shared by pools and the gateway (PodSettings in
pdserve/helm/values.py). Args: dict "root" $ "settings" <pool or gateway values>. */}}
{{- define "pdserve.podSettings" -}}
{{- $s := .settings -}}
{{- with concat (default list .root.Values.imagePullSecrets) (default list $s.imagePullSecrets) }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $s.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
securityContext:
  {{- include "pdserve.orDefault" (dict "values" $s "key" "podSecurityContext" "default" "pdserve.restrictedPod") | nindent 2 }}
{{- with $s.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A secret's value: the existing Secret's (kept across upgrades) or a new random one.
Args: dict "root" $ "name" <Secret name> "key" <key>; base64, as a Secret's data holds it. */}}
{{- define "pdserve.secretData" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name -}}
{{- if and $existing (hasKey (default dict $existing.data) .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- randAlphaNum 48 | b64enc -}}
{{- end -}}
{{- end -}}

{{/* The Secret and key of the admin token / the workers' API key. Args: $ and "admin" | "worker". */}}
{{- define "pdserve.adminSecretName" -}}
{{- default (printf "%s-admin" (include "pdserve.fullname" .)) .Values.gateway.adminToken.existingSecret -}}
{{- end -}}

{{- define "pdserve.workerKeySecretName" -}}
{{- default (printf "%s-worker-key" (include "pdserve.fullname" .)) .Values.gateway.workerApiKey.existingSecret -}}
{{- end -}}

{{- define "pdserve.workerKeyEnv" -}}
- name: VLLM_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "pdserve.workerKeySecretName" . }}
      key: {{ .Values.gateway.workerApiKey.key }}
{{- end -}}

{{- define "pdserve.leaseName" -}}
{{- printf "%s-gateway" (include "pdserve.fullname" .) -}}
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

{{/* The value after `.flag` in the list `.args`, "" when the flag is absent (reads the flags
`pdserve render` wrote; the chart composes none). */}}
{{- define "pdserve.flagValue" -}}
{{- $found := false -}}
{{- $value := "" -}}
{{- range .args -}}
{{- if $found -}}{{- $value = . -}}{{- $found = false -}}{{- end -}}
{{- if eq . $.flag -}}{{- $found = true -}}{{- end -}}
{{- end -}}
{{- $value -}}
{{- end -}}

{{/* A pool's vLLM server, from `pdserve render`: checked against the chart keys that size and
expose its pod. Args: dict "root" $ "name" <pool> "pool" <values>. */}}
{{- define "pdserve.vllmServer" -}}
{{- $server := required (printf "pools.%s.vllm: missing; write the values with `pdserve render`" .name) .pool.vllm -}}
{{- $args := concat $server.args (default list .pool.extraArgs) -}}
{{- $rerender := "edit the profile and run `pdserve render` again" -}}
{{- $port := include "pdserve.flagValue" (dict "args" $args "flag" "--port") -}}
{{- if ne $port (toString .root.Values.vllm.port) -}}
{{- fail (printf "pools.%s.vllm.args serve on --port %s but vllm.port is %v: %s" .name $port .root.Values.vllm.port $rerender) -}}
{{- end -}}
{{- $ranks := include "pdserve.flagValue" (dict "args" $args "flag" "--tensor-parallel-size") -}}
{{- if ne $ranks (toString (int (default 1 .pool.tensorParallelSize))) -}}
{{- fail (printf "pools.%s.vllm.args have --tensor-parallel-size %s but tensorParallelSize is %v: %s" .name $ranks (default 1 .pool.tensorParallelSize) $rerender) -}}
{{- end -}}
{{- $nodes := int (default 1 .pool.nodes) -}}
{{- if and (gt $nodes 1) (ne (include "pdserve.flagValue" (dict "args" $args "flag" "--pipeline-parallel-size")) (toString $nodes)) -}}
{{- fail (printf "pools.%s.nodes: %d needs vLLM to span the nodes: add --pipeline-parallel-size %d --distributed-executor-backend ray to pools.%s.extraArgs" .name $nodes $nodes .name) -}}
{{- end -}}
{{- toJson (dict "command" $server.command "args" $args "env" (default list $server.env)) -}}
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

{{/* The seeded checkpoints init containers write into the model cache (modelCache.seed: one
name, a list, or null), as a JSON list. */}}
{{- define "pdserve.seeds" -}}
{{- $seed := .Values.modelCache.seed -}}
{{- if kindIs "string" $seed }}{{ $seed = list $seed }}{{ end -}}
{{- toJson (default list $seed) -}}
{{- end -}}

{{/* The source of the model a pool serves (Profile.model_for): the profile's model, or the
entry of profile.models its `model` names. Args: dict "root" $ "pool" <values>. A source left
out is the profile's default, tiny. */}}
{{- define "pdserve.poolSource" -}}
{{- $profile := .root.Values.profile -}}
{{- $served := $profile.model -}}
{{- $name := default $profile.model.name .pool.model -}}
{{- range (default list $profile.models) }}{{ if eq .name $name }}{{ $served = . }}{{ end }}{{ end -}}
{{- default "tiny" $served.source -}}
{{- end -}}

{{/* The seeded LoRA adapter sources (`seeded:<base>/<name>[@<rank>]`) of the model a pool
serves, as a JSON list: its pods write them into the model cache, where `pdserve render` points
vLLM's --lora-modules and the gateway's on-demand loads. Args: dict "root" $ "pool" <values>. */}}
{{- define "pdserve.poolAdapterSeeds" -}}
{{- $profile := .root.Values.profile -}}
{{- $served := $profile.model -}}
{{- $name := default $profile.model.name .pool.model -}}
{{- range (default list $profile.models) }}{{ if eq .name $name }}{{ $served = . }}{{ end }}{{ end -}}
{{- $seeds := list -}}
{{- range (default list $served.adapters) }}{{ if hasPrefix "seeded:" .source }}{{ $seeds = append $seeds .source }}{{ end }}{{ end -}}
{{- toJson $seeds -}}
{{- end -}}
