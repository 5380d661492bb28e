#!/usr/bin/env bash
# Builds the real servers used by the e2e suite into the tools cache:
#   ${KEYWARDEN_TOOLS_DIR:-<repo>/.bin}/<name>-<version>
# Usage: e2e/tools/build.sh [kube-apiserver|etcd|vault|csi-sanity ...]
# With no name, builds everything. A binary already present is skipped, so a
# second run costs nothing. Everything comes from the Go module proxy.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
out_dir="${KEYWARDEN_TOOLS_DIR:-$repo/.bin}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"

all=(etcd kube-apiserver vault csi-sanity helm prometheus-operator-crds)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=("${all[@]}")

# build NAME VERSION MODULE_DIR PACKAGE ESTIMATE [extra go build args...]
build() {
	local name="$1" version="$2" moddir="$3" pkg="$4" estimate="$5"
	shift 5
	local dst="$out_dir/$name-$version"
	if [ -x "$dst" ]; then
		echo "tools: $name $version present ($dst)"
		return 0
	fi
	echo "tools: building $name $version (first time takes $estimate)…"
	local start=$SECONDS tmp="$dst.tmp.$$"
	trap 'rm -f "$tmp"' RETURN
	(cd "$here/$moddir" && CGO_ENABLED=0 go build -trimpath -o "$tmp" "$@" "$pkg")
	mv -f "$tmp" "$dst"
	echo "tools: built $name $version in $((SECONDS - start))s -> $dst"
}

# The ServiceMonitor and PrometheusRule CRDs of prometheus-operator, so the chart's optional
# objects are validated by the apiserver against the real schema. They ship in the operator's
# Go module (example/prometheus-operator-crd), so the module proxy serves them.
operator_crds() {
	local version="$PROMETHEUS_OPERATOR_VERSION"
	local dst="$out_dir/prometheus-operator-crds-$version.yaml"
	if [ -f "$dst" ]; then
		echo "tools: prometheus-operator CRDs $version present ($dst)"
		return 0
	fi
	local dir
	dir="$(cd "$(mktemp -d)" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$version" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	local src="$dir/example/prometheus-operator-crd"
	[ -d "$src" ] || { echo "tools: no CRDs in $dir" >&2; return 1; }
	{ cat "$src/monitoring.coreos.com_servicemonitors.yaml"; echo "---"; cat "$src/monitoring.coreos.com_prometheusrules.yaml"; } >"$dst.tmp.$$"
	mv -f "$dst.tmp.$$" "$dst"
	echo "tools: prometheus-operator CRDs $version -> $dst"
}

k8s_ldflags() {
	local v="$KUBE_APISERVER_VERSION" minor
	minor="${v#v1.}"; minor="${minor%%.*}"
	echo "-s -w -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$v"
}

for n in "${names[@]}"; do
	case "$n" in
	kube-apiserver)
		build kube-apiserver "$KUBE_APISERVER_VERSION" k8s k8s.io/kubernetes/cmd/kube-apiserver "~3 min on 2 cores" -ldflags "$(k8s_ldflags)" ;;
	etcd)
		build etcd "$ETCD_VERSION" k8s go.etcd.io/etcd/server/v3 "~1-2 min on 2 cores" -ldflags "-s -w" ;;
	vault)
		build vault "$VAULT_VERSION" vault github.com/hashicorp/vault "~8 min on 2 cores" -ldflags "-s -w" ;;
	csi-sanity)
		build csi-sanity "$CSI_SANITY_VERSION" csi github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity "~1 min" ;;
	helm)
		# Helm v3 (the chart is apiVersion v2, which Helm 3 and 4 both install).
		build helm "$HELM_VERSION" helm helm.sh/helm/v3/cmd/helm "~2 min on 2 cores" \
			-ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" ;;
	prometheus-operator-crds)
		operator_crds ;;
	*)
		echo "tools: unknown tool '$n' (known: ${all[*]})" >&2
		exit 2 ;;
	esac
done
