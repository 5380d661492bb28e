package broker

import (
	"errors"
	"fmt"
	"time"

	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/source/vaultref"
)

// errCertificateRequest is wrapped by every error of pkiRequest.
var errCertificateRequest = errors.New("certificate request")

// pkiRequest derives a certificate request from the caller's verified identity and the
// grant's pki options: the SPIFFE ID is the URI SAN, the grant's DNS names are expanded for
// the caller's namespace and service account, the TTL is the grant's max and its min the
// shortest lifetime accepted. Nothing here comes from the request itself, so a workload
// cannot ask for a name the grant does not give it.
func pkiRequest(w identity.Workload, sg *grant.SecretGrant) (vaultref.PKIRequest, error) {
	var req vaultref.PKIRequest
	if w.ID.IsZero() {
		return req, fmt.Errorf("%w: engine pki needs the workload's SPIFFE ID", errCertificateRequest)
	}
	req.URISAN = w.ID.String()
	if sg.TTL != nil {
		if sg.TTL.Max != nil {
			req.TTL = int64(sg.TTL.Max.Duration.Round(time.Second) / time.Second)
		}
		if sg.TTL.Min != nil {
			req.MinTTL = int64(sg.TTL.Min.Duration.Round(time.Second) / time.Second)
		}
	}
	p := sg.PKI
	if p == nil {
		return req, nil
	}
	for i, pat := range p.DNSNames {
		n, err := grant.ExpandPKIName(pat, w.Namespace, w.ServiceAccount)
		if err != nil {
			return req, fmt.Errorf("%w: pki.dnsNames[%d]: %w", errCertificateRequest, i, err)
		}
		req.DNSNames = append(req.DNSNames, n)
	}
	switch {
	case p.CommonName != "":
		cn, err := grant.ExpandPKIName(p.CommonName, w.Namespace, w.ServiceAccount)
		if err != nil {
			return req, fmt.Errorf("%w: pki.commonName: %w", errCertificateRequest, err)
		}
		req.CommonName = cn
	case len(req.DNSNames) > 0 && len(req.DNSNames[0]) <= vaultref.MaxCNLen:
		req.CommonName = req.DNSNames[0]
	}
	if len(req.CommonName) > vaultref.MaxCNLen {
		return req, fmt.Errorf("%w: pki.commonName: longer than %d bytes for this workload", errCertificateRequest, vaultref.MaxCNLen)
	}
	if p.KeyGeneration == grant.PKIKeyGenerationVault {
		req.KeyGen = vaultref.KeyGenVault
	} else {
		switch p.KeyType {
		case grant.PKIKeyTypeECDSAP384:
			req.KeyType = vaultref.KeyTypeEC384
		case grant.PKIKeyTypeRSA2048:
			req.KeyType = vaultref.KeyTypeRSA2048
		}
	}
	return req, nil
}
