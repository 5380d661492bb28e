package vault

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/vaultref"
)

// fakePKI plays a Vault pki mount at "pki" on the fake Vault: sign/<role> signs the CSR,
// issue/<role> generates the key. Certificates use the fake clock's time.
type fakePKI struct {
	t      *testing.T
	e      *env
	caKey  *ecdsa.PrivateKey
	caCert *x509.Certificate
	caPEM  string

	mu     sync.Mutex
	bodies []map[string]any
	serial int64
	// mutate, when set, changes a certificate template before it is signed.
	mutate func(tmpl *x509.Certificate)
	// otherKey, when set, makes the answer's certificate carry another public key.
	otherKey bool
}

func newFakePKI(t *testing.T, e *env) *fakePKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := e.clock.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	p := &fakePKI{t: t, e: e, caKey: key, caCert: ca, caPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), serial: 100}
	e.f.fault = p.serve
	return p
}

func (p *fakePKI) serve(w http.ResponseWriter, r *http.Request) bool {
	path := strings.TrimPrefix(r.URL.Path, "/v1/")
	op, role, ok := strings.Cut(strings.TrimPrefix(path, "pki/"), "/")
	if !strings.HasPrefix(path, "pki/") || !ok || role != "web" || (op != "sign" && op != "issue") {
		return false
	}
	var body map[string]any
	b, _ := io.ReadAll(r.Body)
	_ = json.Unmarshal(b, &body)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bodies = append(p.bodies, body)
	p.serial++
	ttl := 72 * time.Hour
	if s, _ := body["ttl"].(string); s != "" {
		ttl, _ = time.ParseDuration(s)
	}
	now := p.e.clock.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(p.serial), NotBefore: now.Add(-30 * time.Second), NotAfter: now.Add(ttl)}
	if cn, _ := body["common_name"].(string); cn != "" {
		tmpl.Subject.CommonName = cn
	}
	if alt, _ := body["alt_names"].(string); alt != "" {
		tmpl.DNSNames = strings.Split(alt, ",")
	}
	if u, _ := body["uri_sans"].(string); u != "" {
		pu, _ := url.Parse(u)
		tmpl.URIs = []*url.URL{pu}
	}
	var pub crypto.PublicKey
	ans := map[string]any{}
	if op == "sign" {
		blk, _ := pem.Decode([]byte(body["csr"].(string)))
		csr, err := x509.ParseCertificateRequest(blk.Bytes)
		if err != nil || csr.CheckSignature() != nil {
			writeJSON(w, 400, map[string]any{"errors": []string{vaultErrText}})
			return true
		}
		pub = csr.PublicKey
	} else {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, _ := x509.MarshalPKCS8PrivateKey(k)
		ans["private_key"] = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
		ans["private_key_type"] = "ec"
		pub = &k.PublicKey
	}
	if p.otherKey {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		pub = &k.PublicKey
	}
	if p.mutate != nil {
		p.mutate(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, pub, p.caKey)
	if err != nil {
		p.t.Errorf("fake pki: %v", err)
		writeJSON(w, 500, map[string]any{"errors": []string{vaultErrText}})
		return true
	}
	ans["certificate"] = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	ans["issuing_ca"] = p.caPEM
	ans["ca_chain"] = []string{p.caPEM}
	ans["serial_number"] = tmpl.SerialNumber.String()
	ans["expiration"] = tmpl.NotAfter.Unix()
	writeJSON(w, 200, map[string]any{"data": ans})
	return true
}

func (p *fakePKI) lastBody() map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bodies[len(p.bodies)-1]
}

func pkiRef(t *testing.T, req vaultref.PKIRequest) string {
	t.Helper()
	ref, err := vaultref.Spec{Engine: vaultref.PKI, Mount: "pki", Role: "web", Owner: vaultref.PodOwner("uid-1"), PKI: req}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

const testSPIFFE = "spiffe://cluster.local/ns/shop/sa/web"

// checkCert verifies a certificate secret the way a TLS peer would: tls.crt chains to ca.crt,
// tls.key is the certificate's key, and the URI SAN is the workload's SPIFFE ID.
func checkCert(t *testing.T, sec *source.Secret, now time.Time) *x509.Certificate {
	t.Helper()
	if len(sec.Data) != 3 {
		t.Fatalf("keys = %v; want tls.crt, tls.key, ca.crt", sec.Keys())
	}
	pair, err := tls.X509KeyPair(sec.Data[KeyTLSCert], sec.Data[KeyTLSKey])
	if err != nil {
		t.Fatalf("tls.crt and tls.key are not a pair: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(sec.Data[KeyCACert]) {
		t.Fatal("ca.crt holds no certificate")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now}); err != nil {
		t.Fatalf("the certificate does not verify against ca.crt: %v", err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != testSPIFFE {
		t.Fatalf("URI SANs = %v; want the SPIFFE ID", leaf.URIs)
	}
	if blk, _ := pem.Decode(sec.Data[KeyTLSKey]); blk == nil || blk.Type != "PRIVATE KEY" {
		t.Fatal("tls.key is not a PKCS #8 PEM key")
	}
	return leaf
}

func TestSource_Fetch_pkiSignKeepsTheKeyOnTheNode(t *testing.T) {
	e := newEnv(t, nil)
	p := newFakePKI(t, e)
	ref := pkiRef(t, vaultref.PKIRequest{CommonName: "web.shop.svc", DNSNames: []string{"web.shop.svc", "web.shop.svc.cluster.local"},
		URISAN: testSPIFFE, TTL: 900})
	sec, err := e.s.Fetch(context.Background(), ref)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	leaf := checkCert(t, sec, e.clock.Now())
	body := p.lastBody()
	if _, ok := body["csr"]; !ok {
		t.Fatal("sign mode sent no CSR")
	}
	if body["ttl"] != "900s" || body["common_name"] != "web.shop.svc" || body["alt_names"] != "web.shop.svc,web.shop.svc.cluster.local" || body["uri_sans"] != testSPIFFE {
		t.Fatalf("request body = %v", body)
	}
	if _, ok := body["private_key_format"]; ok {
		t.Fatal("sign mode asked for a private key format")
	}
	if got := e.f.count("PUT pki/sign/web"); got != 1 {
		t.Fatalf("sign calls = %d; want 1", got)
	}
	if leaf.Subject.CommonName != "web.shop.svc" || strings.Join(leaf.DNSNames, ",") != "web.shop.svc,web.shop.svc.cluster.local" {
		t.Fatalf("names = %q %v", leaf.Subject.CommonName, leaf.DNSNames)
	}
	// Re-issued at ⅔ of NotBefore..NotAfter, never renewed.
	lifetime := leaf.NotAfter.Sub(leaf.NotBefore)
	if want := leaf.NotBefore.Add(lifetime * 2 / 3); !sec.RenewAfter.Equal(want) {
		t.Fatalf("RenewAfter = %v; want %v (⅔ of the lifetime)", sec.RenewAfter, want)
	}
	if !sec.ExpiresAt.Equal(leaf.NotAfter) || sec.LeaseID != "" {
		t.Fatalf("ExpiresAt = %v, LeaseID = %q; want NotAfter and no lease", sec.ExpiresAt, sec.LeaseID)
	}
	// The next fetch (the rotation engine's at RenewAfter) issues a new certificate and key.
	e.clock.SetTime(sec.RenewAfter)
	next, err := e.s.Fetch(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	leaf2 := checkCert(t, next, e.clock.Now())
	if leaf2.SerialNumber.Cmp(leaf.SerialNumber) == 0 || next.Version == sec.Version || string(next.Data[KeyTLSKey]) == string(sec.Data[KeyTLSKey]) {
		t.Fatal("the re-issued certificate has the old serial, version or key")
	}
	if strings.Contains(e.logs.String(), "PRIVATE KEY") {
		t.Fatal("a private key reached the logs")
	}
}

func TestSource_Fetch_pkiIssueTakesVaultsKey(t *testing.T) {
	e := newEnv(t, nil)
	p := newFakePKI(t, e)
	sec, err := e.s.Fetch(context.Background(), pkiRef(t, vaultref.PKIRequest{URISAN: testSPIFFE, KeyGen: vaultref.KeyGenVault}))
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	checkCert(t, sec, e.clock.Now())
	body := p.lastBody()
	if _, ok := body["csr"]; ok || body["private_key_format"] != "pkcs8" {
		t.Fatalf("issue body = %v", body)
	}
	if _, ok := body["ttl"]; ok {
		t.Fatal("no ttl bound: the role's default applies, none is sent")
	}
	if e.f.count("PUT pki/issue/web") != 1 {
		t.Fatal("issue mode did not call pki/issue")
	}
	if strings.Contains(e.logs.String(), "PRIVATE KEY") {
		t.Fatal("a private key reached the logs")
	}
}

func TestSource_Fetch_pkiKeyTypes(t *testing.T) {
	for _, kt := range []string{vaultref.KeyTypeEC256, vaultref.KeyTypeEC384, vaultref.KeyTypeRSA2048} {
		t.Run("type-"+kt, func(t *testing.T) {
			e := newEnv(t, nil)
			newFakePKI(t, e)
			sec, err := e.s.Fetch(context.Background(), pkiRef(t, vaultref.PKIRequest{URISAN: testSPIFFE, KeyType: kt}))
			if err != nil {
				t.Fatal(err)
			}
			checkCert(t, sec, e.clock.Now())
		})
	}
}

func TestSource_Fetch_pkiRejectsBadAnswers(t *testing.T) {
	for _, tc := range []struct {
		name     string
		req      vaultref.PKIRequest
		mutate   func(*x509.Certificate)
		otherKey bool
		want     string
	}{
		{name: "no URI SAN", req: vaultref.PKIRequest{URISAN: testSPIFFE}, mutate: func(c *x509.Certificate) { c.URIs = nil }, want: "lacks the workload's SPIFFE ID"},
		{name: "another SPIFFE ID", req: vaultref.PKIRequest{URISAN: testSPIFFE}, mutate: func(c *x509.Certificate) {
			u, _ := url.Parse("spiffe://cluster.local/ns/other/sa/x")
			c.URIs = []*url.URL{u}
		}, want: "lacks the workload's SPIFFE ID"},
		{name: "another key", req: vaultref.PKIRequest{URISAN: testSPIFFE}, otherKey: true, want: "not for the private key"},
		{name: "shorter than ttl.min", req: vaultref.PKIRequest{URISAN: testSPIFFE, TTL: 3600, MinTTL: 1800}, mutate: func(c *x509.Certificate) {
			c.NotAfter = c.NotBefore.Add(10 * time.Minute)
		}, want: "less than the grant's ttl.min"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			p := newFakePKI(t, e)
			p.mutate, p.otherKey = tc.mutate, tc.otherKey
			_, err := e.s.Fetch(context.Background(), pkiRef(t, tc.req))
			if !errors.Is(err, source.ErrUnavailable) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want ErrUnavailable with %q", err, tc.want)
			}
			if !strings.Contains(e.logs.String(), "certificate answer rejected") {
				t.Fatal("the rejection is not logged")
			}
		})
	}
}

func TestSource_Fetch_pkiVaultRefusal(t *testing.T) {
	e := newEnv(t, nil)
	newFakePKI(t, e)
	e.f.mu.Lock()
	e.f.forbidden["pki/sign/web"] = true
	e.f.mu.Unlock()
	// The fake PKI answers before the policy check: take it away for this path.
	e.f.fault = nil
	_, err := e.s.Fetch(context.Background(), pkiRef(t, vaultref.PKIRequest{URISAN: testSPIFFE}))
	if !errors.Is(err, source.ErrForbidden) || strings.Contains(err.Error(), vaultErrText) {
		t.Fatalf("err = %v; want ErrForbidden without Vault's text", err)
	}
}
