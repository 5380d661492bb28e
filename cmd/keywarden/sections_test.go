package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseConfig_kubernetesAuditAdminTCP(t *testing.T) {
	doc := minimalConfig + `kubernetes: {kubeconfig: /etc/kubeconfig}
grants: {kubernetes: true}
audit: {maxEntries: 5000, flushInterval: 50ms}
admin:
  tcp:
    addr: 0.0.0.0:9465
    svidCertFile: /etc/keywarden/svid.pem
    svidKeyFile: /etc/keywarden/svid-key.pem
    bundleFile: /etc/keywarden/bundle.pem
    allowedIDs: [spiffe://cluster.local/admin/alice]
`
	c, err := parseConfig([]byte(doc))
	if err != nil {
		for _, mine := range []string{"kubernetes", "audit", "admin"} {
			if strings.Contains(err.Error(), mine) {
				t.Fatalf("parse: %v", err)
			}
		}
	}
	if c.Kubernetes.Kubeconfig != "/etc/kubeconfig" || !c.Grants.Kubernetes || c.Audit.MaxEntries != 5000 || c.Audit.FlushInterval != 50*time.Millisecond ||
		c.Admin.TCP == nil || c.Admin.TCP.Addr != "0.0.0.0:9465" || len(c.Admin.TCP.AllowedIDs) != 1 {
		t.Fatalf("typed: kubernetes %+v grants %+v audit %+v admin %+v", c.Kubernetes, c.Grants, c.Audit, c.Admin)
	}
}

func TestParseConfig_kubernetesAuditAdminTCPBadInput(t *testing.T) {
	files := "svidCertFile: /a, svidKeyFile: /b, bundleFile: /c"
	tests := []struct{ name, doc, want string }{
		{"informer without kubernetes", "grants: {kubernetes: true}\n", "grants.kubernetes: needs the kubernetes section"},
		{"kubeconfig and inCluster", "kubernetes: {kubeconfig: /k, inCluster: true}\n", "set kubeconfig or inCluster, not both"},
		{"unknown kubernetes key", "kubernetes: {kubecfg: /k}\n", `unknown field "kubecfg"`},
		{"tiny audit", "audit: {maxEntries: 3}\n", "audit.maxEntries"},
		{"bad flush interval", "audit: {flushInterval: soon}\n", "audit.flushInterval"},
		{"tcp without addr", "admin: {tcp: {" + files + ", allowedIDs: [spiffe://cluster.local/a]}}\n", "admin.tcp.addr"},
		{"tcp without svid", "admin: {tcp: {addr: ':1', allowedIDs: [spiffe://cluster.local/a]}}\n", "set svidCertFile, svidKeyFile and bundleFile"},
		{"tcp files and socket", "admin: {tcp: {addr: ':1', " + files + ", workloadAPISocket: /s, allowedIDs: [spiffe://cluster.local/a]}}\n", "not both"},
		{"tcp without allowed ids", "admin: {tcp: {addr: ':1', " + files + "}}\n", "admin.tcp.allowedIDs: list at least one"},
		{"allowed id not spiffe", "admin: {tcp: {addr: ':1', " + files + ", allowedIDs: [https://x/y]}}\n", "is not a SPIFFE ID"},
		{"allowed id other trust domain", "admin: {tcp: {addr: ':1', " + files + ", allowedIDs: [spiffe://other.org/admin]}}\n", "not in trust domain"},
		{"unknown tcp key", "admin: {tcp: {adress: ':1'}}\n", `unknown field "adress"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig([]byte(minimalConfig + tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
