package main

import (
	"strings"
	"testing"
	"time"
)

// vaultBase is a minimal config of its own, so these tests do not depend on other sections'
// requirements.
const vaultBase = `
identity:
  issuer: https://kubernetes.default.svc
  jwksFile: /etc/keywarden/jwks.json
  nodeBinding: false
sources:
  local: {enabled: true}
`

const vaultConfigDoc = vaultBase + `
vault:
  address: https://vault.example:8200
  caFile: /etc/keywarden/vault-ca.pem
  auth: {method: jwt, role: keywarden, tokenFile: /var/run/secrets/tokens/vault}
  limits: {maxConcurrent: 4, requestsPerSecond: 10, burst: 5, requestTimeout: 3s, maxResponseBytes: 65536}
  leases: {grace: 20s, orphanGrace: 2m}
`

func TestParseConfig_vault(t *testing.T) {
	c, err := parseConfig([]byte(vaultConfigDoc))
	if err != nil {
		t.Fatal(err)
	}
	v := c.Vault
	if v == nil || v.Address != "https://vault.example:8200" || v.Auth.Method != "jwt" || v.Auth.Role != "keywarden" ||
		v.MaxConcurrent != 4 || v.RequestTimeout != 3*time.Second || v.LeaseGrace != 20*time.Second ||
		v.OrphanGrace != 2*time.Minute || v.MaxResponseBytes != 65536 || c.KEK.Provider != kekLocal {
		t.Fatalf("vault config: %+v", v)
	}
	c, err = parseConfig([]byte(vaultBase))
	if err != nil || c.Vault != nil {
		t.Fatalf("vault enabled without a vault section: %v", err)
	}
	c, err = parseConfig([]byte(vaultConfigDoc + "  transitKEK: {key: kek}\nkek: {provider: transit}\n"))
	if err != nil || c.KEK.Provider != kekTransit || c.KEK.Transit.Mount != "transit" || c.KEK.Transit.Key != "kek" {
		t.Fatalf("transit kek: %+v %v", c.KEK.Transit, err)
	}
	c, err = parseConfig([]byte(vaultBase + "vault: {address: http://v, namespace: team-a, auth: {role: r, namespace: team-a/auth}}\n"))
	if err != nil || c.Vault.Namespace != "team-a" || c.Vault.Auth.Namespace != "team-a/auth" {
		t.Fatalf("namespaces: %+v %v", c.Vault, err)
	}
	c, err = parseConfig([]byte(vaultBase + "vault: {address: http://v, auth: {method: approle, roleIDFile: /r, secretIDFile: /s, secretIDWrapped: true}}\n"))
	if err != nil || c.Vault.Auth.Method != "approle" || c.Vault.Auth.RoleIDFile != "/r" || !c.Vault.Auth.SecretIDWrapped || c.Vault.Auth.TokenFile != "" {
		t.Fatalf("approle: %+v %v", c.Vault, err)
	}
	c, err = parseConfig([]byte(vaultBase + "metrics: {perSecretLabels: true}\n"))
	if err != nil || !c.Metrics.PerSecretLabels {
		t.Fatalf("metrics.perSecretLabels: %+v %v", c.Metrics, err)
	}
	if _, err := parseConfig([]byte(vaultBase + "metrics: {perSecretLabel: true}\n")); err == nil || !strings.Contains(err.Error(), "perSecretLabel") {
		t.Fatalf("misspelt metrics key accepted: %v", err)
	}
}

func TestParseConfig_vaultBadInput(t *testing.T) {
	tests := []struct{ name, doc, want string }{
		{"unknown key", vaultConfigDoc + "  tokn: x\n", `unknown field "tokn"`},
		{"no address", vaultBase + "vault: {auth: {role: r}}\n", "vault.address: is required"},
		{"bad address", vaultBase + "vault: {address: vault:8200, auth: {role: r}}\n", "vault.address: want an http(s) URL"},
		{"bad method", vaultBase + "vault: {address: http://v, auth: {method: token, role: r}}\n", "vault.auth.method"},
		{"no role", vaultBase + "vault: {address: http://v}\n", "vault.auth.role: is required"},
		{"relative token file", vaultBase + "vault: {address: http://v, auth: {role: r, tokenFile: tok}}\n", "vault.auth.tokenFile"},
		{"bad duration", vaultBase + "vault: {address: http://v, auth: {role: r}, leases: {grace: soon}}\n", "vault.leases.grace"},
		{"transit without vault", vaultBase + "kek: {provider: transit}\n", "kek.provider: transit needs the vault section"},
		{"transit without key", vaultConfigDoc + "kek: {provider: transit}\n", "vault.transitKEK.key: is required"},
		{"transit key without provider", vaultConfigDoc + "  transitKEK: {key: k}\n", "set kek.provider: transit"},
		{"bad provider", vaultBase + "kek: {provider: hsm}\n", "kek.provider: want local or transit"},
		{"approle without secret id", vaultBase + "vault: {address: http://v, auth: {method: approle, roleIDFile: /r}}\n", "vault.auth.secretIDFile: is required with method approle"},
		{"approle relative file", vaultBase + "vault: {address: http://v, auth: {method: approle, roleIDFile: r, secretIDFile: /s}}\n", "vault.auth.roleIDFile: must be an absolute path"},
		{"approle with role", vaultBase + "vault: {address: http://v, auth: {method: approle, role: x, roleIDFile: /r, secretIDFile: /s}}\n", "vault.auth.role: is not used with method approle"},
		{"approle with token file", vaultBase + "vault: {address: http://v, auth: {method: approle, tokenFile: /t, roleIDFile: /r, secretIDFile: /s}}\n", "vault.auth.tokenFile: is not used"},
		{"wrapped without approle", vaultBase + "vault: {address: http://v, auth: {role: r, secretIDWrapped: true}}\n", "vault.auth.secretIDWrapped: is only used with method approle"},
		{"cert without key", vaultBase + "vault: {address: https://v, auth: {method: cert, clientCertFile: /c}}\n", "vault.auth.clientKeyFile: is required with method cert"},
		{"cert over http", vaultBase + "vault: {address: http://v, auth: {method: cert, clientCertFile: /c, clientKeyFile: /k}}\n", "cert needs an https vault.address"},
		{"cert relative key", vaultBase + "vault: {address: https://v, auth: {method: cert, clientCertFile: /c, clientKeyFile: k}}\n", "vault.auth.clientKeyFile: must be an absolute path"},
		{"kubernetes with client cert", vaultBase + "vault: {address: https://v, auth: {role: r, clientCertFile: /c}}\n", "vault.auth.clientCertFile: is not used with method kubernetes"},
		{"namespace slash", vaultBase + "vault: {address: http://v, namespace: /team, auth: {role: r}}\n", "vault.namespace: must not start or end"},
		{"namespace root", vaultBase + "vault: {address: http://v, namespace: root, auth: {role: r}}\n", "vault.namespace: must not contain \"root\""},
		{"auth namespace chars", vaultBase + "vault: {address: http://v, auth: {role: r, namespace: \"a b\"}}\n", "vault.auth.namespace: must be segments"},
		{"namespace too long", vaultBase + "vault: {address: http://v, namespace: " + strings.Repeat("n", 256) + ", auth: {role: r}}\n", "vault.namespace: must be at most 255 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseConfig([]byte(tt.doc))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestVaultBackoffCap(t *testing.T) {
	for _, tc := range []struct{ poll, want time.Duration }{
		{0, 0},
		{200 * time.Millisecond, time.Second},
		{time.Second, time.Second},
		{30 * time.Second, 30 * time.Second},
		{5 * time.Minute, time.Minute},
	} {
		if got := retryBackoffCap(tc.poll); got != tc.want {
			t.Errorf("retryBackoffCap(%v) = %v; want %v", tc.poll, got, tc.want)
		}
	}
}
