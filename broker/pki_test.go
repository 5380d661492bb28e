package broker

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/source/vaultref"
)

func pkiWorkload(t *testing.T, ns, sa, uid string) identity.Workload {
	t.Helper()
	id, err := spiffeid.FromSegments(spiffeid.RequireTrustDomainFromString("cluster.local"), "ns", ns, "sa", sa)
	if err != nil {
		t.Fatal(err)
	}
	return identity.Workload{Namespace: ns, ServiceAccount: sa, PodUID: uid, ID: id}
}

func pkiClause(p *grant.PKIOptions, ttl *grant.TTLBounds) *grant.SecretGrant {
	return &grant.SecretGrant{Name: "cert", Share: grant.ShareModePod, PKI: p, TTL: ttl,
		Source: grant.SecretSource{Vault: &grant.VaultSource{Mount: "pki", Engine: grant.VaultEnginePKI, Role: "web"}}}
}

func TestResolveFor_pkiRequestFromIdentity(t *testing.T) {
	w := pkiWorkload(t, "shop", "web", "uid-1")
	sg := pkiClause(&grant.PKIOptions{DNSNames: []string{"$(serviceAccount).$(namespace).svc", "*.$(namespace).svc.cluster.local"}},
		&grant.TTLBounds{Min: &metav1.Duration{Duration: time.Minute}, Max: &metav1.Duration{Duration: 90 * time.Minute}})
	ref, _, err := resolveFor(w, grant.Decision{Allowed: true, Grant: "g", Secret: sg})
	if err != nil {
		t.Fatal(err)
	}
	spec, err := vaultref.Parse(ref.Path)
	if err != nil {
		t.Fatalf("reference does not parse: %v", err)
	}
	want := vaultref.PKIRequest{CommonName: "web.shop.svc", DNSNames: []string{"web.shop.svc", "*.shop.svc.cluster.local"},
		URISAN: "spiffe://cluster.local/ns/shop/sa/web", TTL: 5400, MinTTL: 60}
	if spec.PKI.CommonName != want.CommonName || strings.Join(spec.PKI.DNSNames, ",") != strings.Join(want.DNSNames, ",") ||
		spec.PKI.URISAN != want.URISAN || spec.PKI.TTL != want.TTL || spec.PKI.MinTTL != want.MinTTL || spec.PKI.KeyGen != "" || spec.PKI.KeyType != "" {
		t.Fatalf("request = %+v; want %+v", spec.PKI, want)
	}
	if spec.Owner != vaultref.PodOwner("uid-1") {
		t.Fatalf("owner = %q", spec.Owner)
	}
	// Another pod of the same service account: its own certificate (share Pod).
	other, _, _ := resolveFor(pkiWorkload(t, "shop", "web", "uid-2"), grant.Decision{Allowed: true, Grant: "g", Secret: sg})
	if other == ref {
		t.Fatal("two pods share a certificate reference under share Pod")
	}
}

func TestResolveFor_pkiOptions(t *testing.T) {
	w := pkiWorkload(t, "shop", "web", "uid-1")
	tests := []struct {
		name    string
		p       *grant.PKIOptions
		check   func(vaultref.PKIRequest) bool
		wantErr string
	}{
		{"no options: only the SPIFFE ID", nil, func(r vaultref.PKIRequest) bool {
			return r.CommonName == "" && len(r.DNSNames) == 0 && r.URISAN == "spiffe://cluster.local/ns/shop/sa/web" && r.TTL == 0
		}, ""},
		{"explicit common name", &grant.PKIOptions{CommonName: "$(serviceAccount)", DNSNames: []string{"a.svc"}}, func(r vaultref.PKIRequest) bool { return r.CommonName == "web" }, ""},
		{"vault keys", &grant.PKIOptions{KeyGeneration: grant.PKIKeyGenerationVault}, func(r vaultref.PKIRequest) bool { return r.KeyGen == vaultref.KeyGenVault }, ""},
		{"rsa", &grant.PKIOptions{KeyType: grant.PKIKeyTypeRSA2048}, func(r vaultref.PKIRequest) bool { return r.KeyType == vaultref.KeyTypeRSA2048 }, ""},
		{"long first name is no CN", &grant.PKIOptions{DNSNames: []string{strings.Repeat("a", 60) + ".$(namespace).svc"}}, func(r vaultref.PKIRequest) bool {
			return r.CommonName == "" && len(r.DNSNames) == 1
		}, ""},
		{"common name too long for this workload", &grant.PKIOptions{CommonName: strings.Repeat("a", 60) + ".$(namespace)"}, nil, "longer than 64 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ref, _, err := resolveFor(w, grant.Decision{Allowed: true, Grant: "g", Secret: pkiClause(tc.p, nil)})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v; want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			spec, err := vaultref.Parse(ref.Path)
			if err != nil || !tc.check(spec.PKI) {
				t.Fatalf("request = %+v (%v)", spec.PKI, err)
			}
		})
	}
	// Without a SPIFFE ID there is no identity to certify.
	if _, _, err := resolveFor(identity.Workload{Namespace: "shop", ServiceAccount: "web", PodUID: "u"}, grant.Decision{Allowed: true, Grant: "g", Secret: pkiClause(nil, nil)}); err == nil {
		t.Fatal("a certificate was requested without a SPIFFE ID")
	}
}

func TestBroker_GetSecret_pkiRequestErrorIsClear(t *testing.T) {
	b := newBroker(t, clocktesting.NewFakeClock(time.Now()), fakeVerifier{})
	if err := b.UpdateGrantSource("store", mustSet(t, `apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: certs}
spec:
  subjects: [{namespace: demo, serviceAccount: "*"}]
  secrets:
    - name: cert
      source: {vault: {mount: pki, engine: pki, role: web}}
      pki: {commonName: "$(serviceAccount).$(namespace).svc"}
`)); err != nil {
		t.Fatal(err)
	}
	w := pkiWorkload(t, "demo", strings.Repeat("a", 60), "uid-1")
	_, err := b.GetSecret(context.Background(), w, "cert", grant.DeliveryGRPC)
	var be *Error
	if !errors.As(err, &be) || !errors.Is(err, ErrUnavailable) ||
		be.Error() != `secret "cert": the grant "certs" cannot make a certificate request for this workload: certificate request: pki.commonName: longer than 64 bytes for this workload` {
		t.Fatalf("err = %v", err)
	}
}
