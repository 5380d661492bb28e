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

func TestParseConfig_auditAnchor(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      *anchorConfig
	}{
		{"off by default", "", nil},
		{"defaults", "audit: {anchor: {enabled: true}}\n",
			&anchorConfig{Interval: 5 * time.Minute, KeyFile: "/var/lib/keywarden/audit-anchor-key.json", Log: true}},
		{"events and no log", "kubernetes: {inCluster: true}\naudit: {anchor: {enabled: true, interval: 1m, keyFile: /k/anchor.json, log: false, events: {namespace: keywarden}}}\n",
			&anchorConfig{Interval: time.Minute, KeyFile: "/k/anchor.json", EventsNamespace: "keywarden"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseConfig([]byte(minimalConfig + tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.want == nil && c.Audit.Anchor != nil:
				t.Errorf("anchor %+v, want none", c.Audit.Anchor)
			case tc.want != nil && (c.Audit.Anchor == nil || *c.Audit.Anchor != *tc.want):
				t.Errorf("anchor %+v, want %+v", c.Audit.Anchor, tc.want)
			}
		})
	}
}

func TestParseConfig_auditAnchorNeedsTheNodeName(t *testing.T) {
	doc := strings.Replace(minimalConfig, "nodeName: node-1\n", "", 1) + "audit: {anchor: {enabled: true}}\n"
	if _, err := parseConfig([]byte(doc)); err == nil || !strings.Contains(err.Error(), "audit.anchor: needs nodeName") {
		t.Fatalf("got %v, want audit.anchor: needs nodeName", err)
	}
	if _, err := parseConfigWith([]byte(doc), configOverrides{NodeName: "from-flag"}); err != nil {
		t.Fatalf("node name from the command line: %v", err)
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
		{"anchor settings while off", "audit: {anchor: {interval: 5m}}\n", "audit.anchor: set enabled: true"},
		{"anchor interval too short", "audit: {anchor: {enabled: true, interval: 1s}}\n", "audit.anchor.interval: want a duration from 10s to 24h0m0s"},
		{"anchor interval not a duration", "audit: {anchor: {enabled: true, interval: often}}\n", "audit.anchor.interval"},
		{"anchor key relative", "audit: {anchor: {enabled: true, keyFile: key.json}}\n", "audit.anchor.keyFile: must be an absolute path"},
		{"anchor key is the kek", "kek: {localKeysetFile: /k.json}\naudit: {anchor: {enabled: true, keyFile: /k.json}}\n", "must not be the KEK's file"},
		{"anchor events without kubernetes", "audit: {anchor: {enabled: true, events: {namespace: keywarden}}}\n", "audit.anchor.events: needs the kubernetes section"},
		{"anchor events bad namespace", "kubernetes: {kubeconfig: /k}\naudit: {anchor: {enabled: true, events: {namespace: Key_Warden}}}\n", "audit.anchor.events.namespace: want a namespace name"},
		{"anchor without sink", "audit: {anchor: {enabled: true, log: false}}\n", "audit.anchor: no sink"},
		{"unknown anchor key", "audit: {anchor: {enabled: true, sinks: [x]}}\n", `unknown field "sinks"`},
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
