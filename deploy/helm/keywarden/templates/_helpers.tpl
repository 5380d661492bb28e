{{/* Names and labels shared by every object. */}}

{{- define "keywarden.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "keywarden.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "keywarden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keywarden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "keywarden.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "keywarden.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keywarden
{{- end -}}

{{- define "keywarden.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "keywarden.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "keywarden.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Paths inside the keywarden container. Host paths are mounted at the same place, because
     kubelet names target paths by their host path. */}}
{{- define "keywarden.pluginDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.kubeletRoot) .Values.driverName -}}
{{- end -}}
{{- define "keywarden.vaultTokenDir" -}}/var/run/secrets/keywarden/vault{{- end -}}
{{- define "keywarden.vaultCADir" -}}/etc/keywarden/vault-ca{{- end -}}

{{/* The daemon's config file: the same schema as `keywarden serve --config`. */}}
{{- define "keywarden.config" -}}
{{- $c := .Values.config -}}
{{- $id := dict "issuer" $c.identity.issuer "mode" $c.identity.mode "audiences" $c.identity.audiences "trustDomain" $c.identity.trustDomain "leeway" $c.identity.leeway "maxLifetime" $c.identity.maxLifetime "nodeBinding" $c.identity.nodeBinding -}}
{{- if eq $c.identity.mode "jwt" -}}
{{- if $c.identity.jwksURL -}}
{{- $_ := set $id "jwksURL" $c.identity.jwksURL -}}
{{- else -}}
{{- $_ := set $id "discoveryURL" (required "config.identity.discoveryURL or config.identity.jwksURL is required in jwt mode" $c.identity.discoveryURL) -}}
{{- end -}}
{{- with $c.identity.caFile }}{{ $_ := set $id "caFile" . }}{{ end -}}
{{- /* The daemon's token authenticates it to the apiserver: send it to the key endpoints only
     when they are the in-cluster apiserver (or the operator names a token file), never to an
     external OIDC host such as a cloud provider's issuer. */ -}}
{{- $keysURL := default $c.identity.discoveryURL $c.identity.jwksURL -}}
{{- if $c.identity.bearerTokenFile -}}
{{- $_ := set $id "bearerTokenFile" $c.identity.bearerTokenFile -}}
{{- else if regexMatch `^https://kubernetes\.default\.svc(\.cluster\.local)?(:443)?(/|$)` $keysURL -}}
{{- $_ := set $id "bearerTokenFile" "/var/run/secrets/kubernetes.io/serviceaccount/token" -}}
{{- end -}}
{{- end -}}
{{- $grants := dict "kubernetes" $c.grants.kubernetes -}}
{{- with $c.grants.file }}{{ $_ := set $grants "file" . }}{{ end -}}
{{- $cfg := dict
  "dataDir" .Values.hostPaths.state
  "socket" (dict "path" (printf "%s/keywarden.sock" (trimSuffix "/" .Values.hostPaths.sockets)) "mode" "0666")
  "adminSocket" (dict "path" (printf "%s/admin/admin.sock" (trimSuffix "/" .Values.hostPaths.sockets)))
  "health" (dict "addr" (printf ":%d" (int $c.health.port)))
  "kubernetes" (dict "inCluster" true)
  "identity" $id
  "grants" $grants
  "rotation" (dict "pollInterval" $c.rotation.pollInterval "maxStale" $c.rotation.maxStale)
  "audit" (include "keywarden.auditConfig" . | fromYaml)
  "csi" (dict "socket" (printf "%s/csi.sock" (include "keywarden.pluginDir" .)) "kubeletRoot" (trimSuffix "/" .Values.kubeletRoot) "driverName" .Values.driverName "tmpfsSize" $c.csi.tmpfsSize)
  "log" (dict "level" $c.log.level "format" $c.log.format)
-}}
{{- $limits := dict -}}
{{- with $c.limits.maxRecvMsgBytes }}{{ $_ := set $limits "maxRecvMsgBytes" . }}{{ end -}}
{{- with $c.limits.maxConcurrentStreams }}{{ $_ := set $limits "maxConcurrentStreams" . }}{{ end -}}
{{- with $c.limits.maxWatchesPerWorkload }}{{ $_ := set $limits "maxWatchesPerWorkload" . }}{{ end -}}
{{- with $c.limits.maxWatches }}{{ $_ := set $limits "maxWatches" . }}{{ end -}}
{{- if $limits }}{{ $_ := set $cfg "limits" $limits }}{{ end -}}
{{- if .Values.vault.enabled -}}
{{- $v := .Values.vault -}}
{{- $auth := dict "method" $v.auth.method "mount" $v.auth.mount -}}
{{- if has $v.auth.method (list "kubernetes" "jwt") }}{{ $_ := set $auth "role" $v.auth.role }}{{ $_ := set $auth "tokenFile" (printf "%s/token" (include "keywarden.vaultTokenDir" .)) }}{{ end -}}
{{- $vault := dict "address" (required "vault.address is required when vault.enabled" $v.address) "auth" $auth -}}
{{- with $v.caConfigMap }}{{ $_ := set $vault "caFile" (printf "%s/ca.crt" (include "keywarden.vaultCADir" $)) }}{{ end -}}
{{- with $v.namespace }}{{ $_ := set $vault "namespace" . }}{{ end -}}
{{- with $v.auth.namespace }}{{ $_ := set $vault.auth "namespace" . }}{{ end -}}
{{- $vl := dict -}}
{{- with $v.limits.maxConcurrent }}{{ $_ := set $vl "maxConcurrent" . }}{{ end -}}
{{- with $v.limits.requestsPerSecond }}{{ $_ := set $vl "requestsPerSecond" . }}{{ end -}}
{{- with $v.limits.burst }}{{ $_ := set $vl "burst" . }}{{ end -}}
{{- with $v.limits.requestTimeout }}{{ $_ := set $vl "requestTimeout" . }}{{ end -}}
{{- if $vl }}{{ $_ := set $vault "limits" $vl }}{{ end -}}
{{- with $v.leases.grace }}{{ $_ := set $vault "leases" (dict "grace" .) }}{{ end -}}
{{- if $v.transitKEK.enabled -}}
{{- $_ := set $vault "transitKEK" (dict "mount" $v.transitKEK.mount "key" $v.transitKEK.key) -}}
{{- $_ := set $cfg "kek" (dict "provider" "transit") -}}
{{- end -}}
{{- $_ := set $cfg "vault" $vault -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $cfg (deepCopy .Values.extraConfig)) -}}
{{- end -}}

{{/* The audit section of the daemon's config. */}}
{{- define "keywarden.auditConfig" -}}
{{- $a := .Values.config.audit -}}
{{- $audit := dict "maxEntries" $a.maxEntries "flushInterval" $a.flushInterval -}}
{{- if $a.anchor.enabled -}}
{{- $anchor := dict "enabled" true "interval" $a.anchor.interval "log" $a.anchor.log -}}
{{- if $a.anchor.events }}{{ $_ := set $anchor "events" (dict "namespace" .Release.Namespace) }}{{ end -}}
{{- $_ := set $audit "anchor" $anchor -}}
{{- end -}}
{{- toYaml $audit -}}
{{- end -}}
