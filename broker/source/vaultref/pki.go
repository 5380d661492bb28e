package vaultref

import (
	"slices"
	"strconv"
	"strings"
)

// Key generation and key types of a PKI request. The defaults (node, ECDSA P-256) are the
// empty strings, so that a canonical reference never spells them.
const (
	KeyGenNode     = ""
	KeyGenVault    = "vault"
	KeyTypeEC256   = ""
	KeyTypeEC384   = "ec384"
	KeyTypeRSA2048 = "rsa2048"
)

// Limits of a PKI request.
const (
	MaxDNSNames   = 16
	MaxCNLen      = 64
	maxDNSNameLen = 253
	maxURILen     = 2048
)

// PKIRequest is what a certificate is requested with: names derived from the workload, the
// TTL bounds of the grant, and where the key is generated.
type PKIRequest struct {
	// CommonName is the subject CN; empty sends none.
	CommonName string
	// DNSNames are the DNS SANs, in the grant's order.
	DNSNames []string
	// URISAN is the workload's SPIFFE ID.
	URISAN string
	// TTL is the lifetime asked for, in seconds; 0 is the role's default.
	TTL int64
	// MinTTL is the shortest lifetime accepted, in seconds; 0 accepts any.
	MinTTL int64
	// KeyGen is KeyGenNode (a CSR to <mount>/sign/<role>) or KeyGenVault (<mount>/issue/<role>).
	KeyGen string
	// KeyType of a node-generated key.
	KeyType string
}

// IsZero reports whether no field is set.
func (p PKIRequest) IsZero() bool {
	return p.CommonName == "" && len(p.DNSNames) == 0 && p.URISAN == "" && p.TTL == 0 && p.MinTTL == 0 && p.KeyGen == "" && p.KeyType == ""
}

func (p PKIRequest) encode(add func(k, v string)) {
	if p.CommonName != "" {
		add("cn", p.CommonName)
	}
	if len(p.DNSNames) > 0 {
		add("dns", strings.Join(p.DNSNames, ","))
	}
	if p.URISAN != "" {
		add("uri", p.URISAN)
	}
	if p.TTL != 0 {
		add("ttl", strconv.FormatInt(p.TTL, 10))
	}
	if p.MinTTL != 0 {
		add("minttl", strconv.FormatInt(p.MinTTL, 10))
	}
	if p.KeyGen != "" {
		add("keygen", p.KeyGen)
	}
	if p.KeyType != "" {
		add("keytype", p.KeyType)
	}
}

func (p *PKIRequest) decode(k, v string) error {
	switch k {
	case "cn":
		p.CommonName = v
	case "dns":
		p.DNSNames = strings.Split(v, ",")
	case "uri":
		p.URISAN = v
	case "ttl", "minttl":
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return bad("%s is not a number", k)
		}
		if k == "ttl" {
			p.TTL = n
		} else {
			p.MinTTL = n
		}
	case "keygen":
		p.KeyGen = v
	case "keytype":
		p.KeyType = v
	}
	return nil
}

func (p PKIRequest) validate() error {
	if len(p.CommonName) > MaxCNLen || !nameChars(p.CommonName, false) {
		return bad("cn must be at most %d bytes of DNS name characters", MaxCNLen)
	}
	if len(p.DNSNames) > MaxDNSNames {
		return bad("more than %d DNS names", MaxDNSNames)
	}
	for i, n := range p.DNSNames {
		if n == "" || len(n) > maxDNSNameLen || !nameChars(n, true) {
			return bad("DNS name %d must be 1-%d bytes of [a-z0-9.-], with an optional leading \"*.\"", i, maxDNSNameLen)
		}
		if slices.Contains(p.DNSNames[:i], n) {
			return bad("DNS name %d repeated", i)
		}
	}
	if p.URISAN != "" && (len(p.URISAN) > maxURILen || !strings.HasPrefix(p.URISAN, "spiffe://") || !uriChars(p.URISAN)) {
		return bad("uri must be a SPIFFE ID of at most %d bytes", maxURILen)
	}
	if p.TTL < 0 || p.MinTTL < 0 || (p.TTL > 0 && p.MinTTL > p.TTL) {
		return bad("ttl and minttl must be non-negative, minttl at most ttl")
	}
	switch p.KeyGen {
	case KeyGenNode:
	case KeyGenVault:
		if p.KeyType != "" {
			return bad("keytype is only used with node key generation")
		}
	default:
		return bad("keygen must be empty (node) or vault")
	}
	switch p.KeyType {
	case KeyTypeEC256, KeyTypeEC384, KeyTypeRSA2048:
	default:
		return bad("keytype must be empty (ECDSA P-256), ec384 or rsa2048")
	}
	return nil
}

// nameChars: lower-case DNS characters; wildcard allows a leading "*.".
func nameChars(s string, wildcard bool) bool {
	if wildcard {
		s = strings.TrimPrefix(s, "*.")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func uriChars(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= 0x20 || c >= 0x7f || c == ',' {
			return false
		}
	}
	return true
}
