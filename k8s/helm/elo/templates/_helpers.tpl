{{/*
Names, labels and the two configs rendered from values: the Serve application's AppConfig and the policy file.
*/}}

{{/* Chart name, for the app.kubernetes.io/name label. */}}
{{- define "elo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects, and the RayService's name. Cut to 40 characters: KubeRay names the Serve
Service "<name>-serve-svc" and cuts names longer than 50 characters from the front.
*/}}
{{- define "elo.fullname" -}}
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

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "elo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels; call with (dict "ctx" $ "component" "controller"). */}}
{{- define "elo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "elo.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Standard labels; call with (dict "ctx" $ "component" "controller"). */}}
{{- define "elo.labels" -}}
helm.sh/chart: {{ include "elo.chart" .ctx }}
{{ include "elo.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: {{ include "elo.name" .ctx }}
{{- end }}

{{/* The image of the Ray pods and the controller. */}}
{{- define "elo.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The controller's ServiceAccount. */}}
{{- define "elo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-controller" (include "elo.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Services KubeRay creates for a RayService (ray-operator utils.GenerateServeServiceName / GenerateHeadServiceName). */}}
{{- define "elo.serveServiceName" -}}
{{- printf "%s-serve-svc" (include "elo.fullname" .) }}
{{- end }}
{{- define "elo.headServiceName" -}}
{{- printf "%s-head-svc" (include "elo.fullname" .) }}
{{- end }}

{{/* The Ray custom resource that tags a pool's pods (orchestrator.control.adapters.local_backend.pool_resource). */}}
{{- define "elo.poolResource" -}}
{{- printf "pool-%s" . }}
{{- end }}

{{/* Names of the enabled pools, sorted, one per line. */}}
{{- define "elo.enabledPools" -}}
{{- range $name := keys .Values.pools | sortAlpha }}
{{- if (index $.Values.pools $name).enabled }}
{{ $name }}
{{- end }}
{{- end }}
{{- end }}

{{/* Replicas one pod of the pool holds: the policy's replicas_per_node (1 without a policy entry). */}}
{{- define "elo.replicasPerNode" -}}
{{- $pool := index .ctx.Values.policy.pools .pool | default dict }}
{{- $pool.replicas_per_node | default 1 | int }}
{{- end }}

{{/*
Cross-field checks that JSON schema cannot express; each failure names the fields.
*/}}
{{- define "elo.validate" -}}
{{- $enabled := include "elo.enabledPools" . | trim | splitList "\n" | compact }}
{{- if not $enabled }}
{{- fail "pools: enable at least one pool (pools.cloud.enabled or pools.edge.enabled)" }}
{{- end }}
{{- range $pool := .Values.router.fill_order | default list }}
{{- if not (has $pool $enabled) }}
{{- fail (printf "router.fill_order: %q is not an enabled pool %v" $pool $enabled) }}
{{- end }}
{{- end }}
{{- range $cls, $pool := .Values.router.slo_class_preferences }}
{{- if not (has $pool $enabled) }}
{{- fail (printf "router.slo_class_preferences.%s: %q is not an enabled pool %v" $cls $pool $enabled) }}
{{- end }}
{{- end }}
{{- $auth := .Values.router.auth | default dict }}
{{- if and .Values.controller.enabled $auth.keys (not (.Values.apiKeys | default dict).existingSecret) }}
{{- fail "router.auth.keys: with API keys on, the controller needs the router's admin key: set apiKeys.existingSecret to a Secret with an admin-key entry (or controller.enabled=false)" }}
{{- end }}
{{- $groupNames := list }}
{{- range $name := $enabled }}
{{- $p := index $.Values.pools $name }}
{{- $wg := $p.workerGroup }}
{{- $perNode := include "elo.replicasPerNode" (dict "ctx" $ "pool" $name) | int }}
{{- if has $wg.groupName $groupNames }}
{{- fail (printf "pools.%s.workerGroup.groupName %q is already the worker group of another pool; each pool needs its own" $name $wg.groupName) }}
{{- end }}
{{- $groupNames = append $groupNames $wg.groupName }}
{{- if and (eq $p.engine "vllm") (gt (int $wg.gpus) 0) (gt $perNode (int $wg.gpus)) }}
{{- fail (printf "policy.pools.%s.replicas_per_node (%d) exceeds pools.%s.workerGroup.gpus (%d): each vLLM replica takes a GPU" $name $perNode $name (int $wg.gpus)) }}
{{- end }}
{{- if gt (int $wg.minReplicas) (int $wg.maxReplicas) }}
{{- fail (printf "pools.%s.workerGroup.minReplicas (%d) is greater than pools.%s.workerGroup.maxReplicas (%d)" $name (int $wg.minReplicas) $name (int $wg.maxReplicas)) }}
{{- end }}
{{- if or (lt (int $wg.replicas) (int $wg.minReplicas)) (gt (int $wg.replicas) (int $wg.maxReplicas)) }}
{{- fail (printf "pools.%s.workerGroup.replicas (%d) is outside minReplicas..maxReplicas (%d..%d)" $name (int $wg.replicas) (int $wg.minReplicas) (int $wg.maxReplicas)) }}
{{- end }}
{{- if gt (int $p.replicas) (mul (int $wg.replicas) $perNode) }}
{{- fail (printf "pools.%s.replicas (%d) needs more pods than pools.%s.workerGroup.replicas (%d pods x %d replicas per node)" $name (int $p.replicas) $name (int $wg.replicas) $perNode) }}
{{- end }}
{{- if $.Values.controller.enabled }}
{{- $pp := index $.Values.policy.pools $name | default dict }}
{{- if not $pp }}
{{- fail (printf "policy.pools.%s: pool %s is enabled but has no policy entry" $name $name) }}
{{- end }}
{{- if lt (mul (int $wg.maxReplicas) $perNode) (int $pp.max_replicas) }}
{{- fail (printf "pools.%s.workerGroup.maxReplicas (%d pods x %d replicas per node) is below policy.pools.%s.max_replicas (%d)" $name (int $wg.maxReplicas) $perNode $name (int $pp.max_replicas)) }}
{{- end }}
{{- if ne $p.engine $pp.engine }}
{{- fail (printf "policy.pools.%s.engine (%s) differs from pools.%s.engine (%s)" $name $pp.engine $name $p.engine) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The Serve application's AppConfig (deployments/config.py) as YAML: model and router as given, each enabled pool's
Serve settings with its placement added (resources {"pool-<pool>": 1}; num_gpus 1 for vllm on GPU pods).
*/}}
{{- define "elo.appConfig" -}}
{{- $pools := dict }}
{{- range $name := include "elo.enabledPools" . | trim | splitList "\n" | compact }}
{{- $p := index $.Values.pools $name }}
{{- $cfg := omit $p "enabled" "workerGroup" | deepCopy }}
{{- $opts := deepCopy ($cfg.ray_actor_options | default dict) }}
{{- $res := deepCopy ($opts.resources | default dict) }}
{{- $_ := set $res (include "elo.poolResource" $name) 1 }}
{{- $_ := set $opts "resources" $res }}
{{- if and (eq $p.engine "vllm") (gt (int $p.workerGroup.gpus) 0) (not (hasKey $opts "num_gpus")) }}
{{- $_ := set $opts "num_gpus" 1 }}
{{- end }}
{{- $_ := set $cfg "ray_actor_options" $opts }}
{{- $_ := set $pools $name $cfg }}
{{- end }}
{{- /* The router asks for a sliver of the head's "elo-head" resource: no worker pod hosts it, so each can be drained. */}}
{{- $router := deepCopy .Values.router }}
{{- /* helm drops a key set to null, so an absent probe_every_s (60 in values.yaml) is the user's null: never probe. */}}
{{- if not (hasKey $router "probe_every_s") }}
{{- $_ := set $router "probe_every_s" nil }}
{{- end }}
{{- $ropts := deepCopy ($router.ray_actor_options | default dict) }}
{{- $rres := deepCopy ($ropts.resources | default dict) }}
{{- $_ := set $rres "elo-head" 0.001 }}
{{- $_ := set $ropts "resources" $rres }}
{{- $_ := set $router "ray_actor_options" $ropts }}
{{- dict "model" .Values.model "pools" $pools "router" $router | toYaml }}
{{- end }}

{{/* Ray Serve's config (ServeDeploySchema) of the RayService: one application built from the AppConfig. */}}
{{- define "elo.serveConfig" -}}
{{- $app := dict
  "name" "elo"
  "route_prefix" "/"
  "import_path" "deployments.app:app_builder"
  "external_scaler_enabled" true
  "args" (dict "config" (include "elo.appConfig" . | fromYaml)) }}
{{- dict "applications" (list $app) | toYaml }}
{{- end }}

{{/* The policy file: values.policy with the pools that are not enabled left out. */}}
{{- define "elo.policy" -}}
{{- $enabled := include "elo.enabledPools" . | trim | splitList "\n" | compact }}
{{- $policy := deepCopy .Values.policy }}
{{- $pools := dict }}
{{- range $name, $p := .Values.policy.pools }}
{{- if has $name $enabled }}
{{- $_ := set $pools $name $p }}
{{- end }}
{{- end }}
{{- $_ := set $policy "pools" $pools }}
{{- with $policy.guardrails }}
{{- $steps := dict }}
{{- range $name, $step := .max_step_per_tick_by_pool }}
{{- if has $name $enabled }}
{{- $_ := set $steps $name $step }}
{{- end }}
{{- end }}
{{- $_ := set . "max_step_per_tick_by_pool" $steps }}
{{- end }}
{{- toYaml $policy }}
{{- end }}
