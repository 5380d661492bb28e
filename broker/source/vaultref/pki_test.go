package vaultref

import (
	"errors"
	"strings"
	"testing"
)

func pkiSpec(req PKIRequest) Spec {
	return Spec{Engine: PKI, Mount: "pki", Role: "web", Owner: PodOwner("uid-1"), PKI: req}
}

func TestSpec_Encode_pkiRoundTrip(t *testing.T) {
	for _, req := range []PKIRequest{
		{},
		{URISAN: "spiffe://cluster.local/ns/shop/sa/web"},
		{CommonName: "web.shop.svc", DNSNames: []string{"web.shop.svc", "*.shop.svc"}, URISAN: "spiffe://cluster.local/ns/shop/sa/web", TTL: 900, MinTTL: 60},
		{URISAN: "spiffe://td/x", KeyGen: KeyGenVault},
		{URISAN: "spiffe://td/x", KeyType: KeyTypeEC384},
		{KeyType: KeyTypeRSA2048},
	} {
		ref, err := pkiSpec(req).Encode()
		if err != nil {
			t.Fatalf("Encode(%+v): %v", req, err)
		}
		got, err := Parse(ref)
		if err != nil {
			t.Fatalf("Parse(%q): %v", ref, err)
		}
		if got.PKI.CommonName != req.CommonName || strings.Join(got.PKI.DNSNames, ",") != strings.Join(req.DNSNames, ",") || got.PKI.URISAN != req.URISAN ||
			got.PKI.TTL != req.TTL || got.PKI.MinTTL != req.MinTTL || got.PKI.KeyGen != req.KeyGen || got.PKI.KeyType != req.KeyType {
			t.Fatalf("round trip of %+v gave %+v", req, got.PKI)
		}
	}
	// Two workloads' requests are two references: the rotation engine fetches each.
	a, _ := pkiSpec(PKIRequest{URISAN: "spiffe://td/ns/a/sa/x"}).Encode()
	b, _ := pkiSpec(PKIRequest{URISAN: "spiffe://td/ns/b/sa/x"}).Encode()
	if a == b {
		t.Fatal("different SPIFFE IDs encode to one reference")
	}
}

func TestSpec_Encode_pkiRejects(t *testing.T) {
	tests := []struct {
		name string
		spec Spec
		want string
	}{
		{"pki fields on kv", Spec{Engine: KVv2, Mount: "secret", Path: "a", PKI: PKIRequest{CommonName: "x"}}, "only used by engine pki"},
		{"pki fields on database", Spec{Engine: Database, Mount: "db", Role: "r", Owner: PodOwner("u"), PKI: PKIRequest{TTL: 5}}, "only used by engine pki"},
		{"long cn", pkiSpec(PKIRequest{CommonName: strings.Repeat("a", 65)}), "cn must be at most 64 bytes"},
		{"cn with a comma", pkiSpec(PKIRequest{CommonName: "a,b"}), "cn must be"},
		{"dns with a comma", pkiSpec(PKIRequest{DNSNames: []string{"a,b"}}), "DNS name 0"},
		{"empty dns", pkiSpec(PKIRequest{DNSNames: []string{""}}), "DNS name 0"},
		{"upper-case dns", pkiSpec(PKIRequest{DNSNames: []string{"A.svc"}}), "DNS name 0"},
		{"repeated dns", pkiSpec(PKIRequest{DNSNames: []string{"a.svc", "a.svc"}}), "DNS name 1 repeated"},
		{"too many dns", pkiSpec(PKIRequest{DNSNames: strings.Split("a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q", ",")}), "more than 16 DNS names"},
		{"uri not spiffe", pkiSpec(PKIRequest{URISAN: "https://x"}), "uri must be a SPIFFE ID"},
		{"uri with a space", pkiSpec(PKIRequest{URISAN: "spiffe://td/a b"}), "uri must be a SPIFFE ID"},
		{"negative ttl", pkiSpec(PKIRequest{TTL: -1}), "ttl and minttl"},
		{"min above ttl", pkiSpec(PKIRequest{TTL: 10, MinTTL: 20}), "minttl at most ttl"},
		{"unknown keygen", pkiSpec(PKIRequest{KeyGen: "node"}), "keygen must be empty (node) or vault"},
		{"unknown keytype", pkiSpec(PKIRequest{KeyType: "ec256"}), "keytype must be empty"},
		{"keytype with vault", pkiSpec(PKIRequest{KeyGen: KeyGenVault, KeyType: KeyTypeEC384}), "keytype is only used with node"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.spec.Encode()
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want %q", err, tc.want)
			}
		})
	}
	for _, ref := range []string{
		"engine=pki&mount=pki&role=web&owner=pod%2Fu&ttl=x",
		"engine=pki&mount=pki&role=web&owner=pod%2Fu&keygen=",
		"engine=pki&mount=pki&role=web&owner=pod%2Fu&ttl=0",
		"engine=pki&mount=pki&role=web&owner=pod%2Fu&ttl=5&cn=a",
	} {
		if _, err := Parse(ref); !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%q) = %v; want ErrInvalid (not canonical or malformed)", ref, err)
		}
	}
}
