package broker

import (
	"errors"

	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/vaultref"
)

// VaultSourceName is the source name under which the daemon registers its Vault source.
const VaultSourceName = "vault"

// resolveFor is resolve for one caller: a leased Vault engine's reference also names who
// shares the credential (the grant's share mode), so that the rotation engine's one fetch per
// reference gives one credential per pod, per service account or per grant.
func resolveFor(w identity.Workload, dec grant.Decision) (source.Ref, []string, error) {
	sg := dec.Secret
	if sg == nil || sg.Source.Vault == nil {
		return resolve(sg)
	}
	owner := ""
	if vaultref.Engine(engineOf(sg.Source.Vault)).Leased() {
		switch sg.Share {
		case grant.ShareModePod:
			if w.PodUID == "" {
				return source.Ref{}, nil, errors.New("share mode Pod needs a pod-bound token")
			}
			owner = vaultref.PodOwner(w.PodUID)
		case grant.ShareModeGrant:
			owner = vaultref.GrantOwner(dec.Grant)
		default:
			owner = vaultref.ServiceAccountOwner(w.Namespace, w.ServiceAccount)
		}
	}
	ref, keys, err := vaultRef(sg, owner)
	if err != nil || engineOf(sg.Source.Vault) != grant.VaultEnginePKI {
		return ref, keys, err
	}
	req, err := pkiRequest(w, sg)
	if err != nil {
		return source.Ref{}, nil, err
	}
	return vaultRefPKI(sg, owner, req)
}

func engineOf(vs *grant.VaultSource) grant.VaultEngine {
	if vs.Engine == "" {
		return grant.VaultEngineKVv2
	}
	return vs.Engine
}

// vaultRef builds the canonical reference of a Vault secret clause. owner must be set for
// leased engines.
func vaultRef(sg *grant.SecretGrant, owner string) (source.Ref, []string, error) {
	return vaultRefPKI(sg, owner, vaultref.PKIRequest{})
}

func vaultRefPKI(sg *grant.SecretGrant, owner string, req vaultref.PKIRequest) (source.Ref, []string, error) {
	vs := sg.Source.Vault
	path, err := vaultref.Spec{
		Engine: vaultref.Engine(engineOf(vs)), Mount: vs.Mount, Path: vs.Path, Role: vs.Role,
		Version: vs.Version, Keys: sg.Keys, Owner: owner, PKI: req, Namespace: vs.Namespace,
	}.Encode()
	if err != nil {
		return source.Ref{}, nil, err
	}
	return source.Ref{Source: VaultSourceName, Path: path}, sg.Keys, nil
}
