package grant

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Group, Version and Kind of the AccessGrant resource.
const (
	GroupName  = "keywarden.io"
	Version    = "v1alpha1"
	APIVersion = GroupName + "/" + Version
	Kind       = "AccessGrant"
)

// AccessGrant binds subjects (workload identities) to named secrets. It is cluster-scoped
// because it is written by cluster administrators and may name subjects in any namespace.
//
// +genclient
// +genclient:nonNamespaced
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=ag
// +kubebuilder:printcolumn:name="Effect",type=string,JSONPath=`.spec.effect`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:object:generate=true
type AccessGrant struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec says who may receive which secrets, from where, and how.
	// +kubebuilder:validation:Required
	Spec AccessGrantSpec `json:"spec"`
}

// AccessGrantList is a list of AccessGrants.
//
// +kubebuilder:object:root=true
// +kubebuilder:object:generate=true
type AccessGrantList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AccessGrant `json:"items"`
}

// Effect is what a matching grant does to a request.
// +kubebuilder:validation:Enum=Allow;Deny
type Effect string

const (
	// EffectAllow lets matching requests through unless a Deny also matches. The default.
	EffectAllow Effect = "Allow"
	// EffectDeny refuses matching requests, whatever Allow grants say.
	EffectDeny Effect = "Deny"
)

// Delivery is a channel through which a workload receives a secret.
// +kubebuilder:validation:Enum=CSI;GRPC;GRPCSealed
type Delivery string

const (
	// DeliveryCSI is files in the Keywarden CSI volume.
	DeliveryCSI Delivery = "CSI"
	// DeliveryGRPC is the workload gRPC API on the node socket, sealed or not: a grant that
	// lists GRPC also allows GRPCSealed, and a Deny that lists it also denies GRPCSealed.
	DeliveryGRPC Delivery = "GRPC"
	// DeliveryGRPCSealed is the workload gRPC API with the response sealed to the caller's
	// reply key (HPKE). A grant that lists it but not GRPC requires sealed responses.
	DeliveryGRPCSealed Delivery = "GRPCSealed"
)

// ShareMode says which workloads share one dynamic (leased) credential.
// +kubebuilder:validation:Enum=Pod;ServiceAccount;Grant
type ShareMode string

const (
	// ShareModePod issues one credential per pod.
	ShareModePod ShareMode = "Pod"
	// ShareModeServiceAccount shares one credential among the pods of a service account on a
	// node. The default.
	ShareModeServiceAccount ShareMode = "ServiceAccount"
	// ShareModeGrant shares one credential among every workload the grant matches on a node.
	ShareModeGrant ShareMode = "Grant"
)

// VaultEngine is the kind of Vault secrets engine behind a mount.
// +kubebuilder:validation:Enum=kv-v2;kv-v1;database;pki;generic
type VaultEngine string

const (
	// VaultEngineKVv2 is the versioned key/value engine. The default.
	VaultEngineKVv2 VaultEngine = "kv-v2"
	// VaultEngineKVv1 is the unversioned key/value engine.
	VaultEngineKVv1 VaultEngine = "kv-v1"
	// VaultEngineDatabase issues leased database credentials for a role.
	VaultEngineDatabase VaultEngine = "database"
	// VaultEnginePKI issues certificates for a role.
	VaultEnginePKI VaultEngine = "pki"
	// VaultEngineGeneric reads any path and treats the response data as the secret.
	VaultEngineGeneric VaultEngine = "generic"
)

// AccessGrantSpec is the body of an AccessGrant.
// +kubebuilder:object:generate=true
type AccessGrantSpec struct {
	// Effect is Allow (the default) or Deny. A matching Deny always wins over any Allow.
	// +kubebuilder:default=Allow
	// +optional
	Effect Effect `json:"effect,omitempty"`

	// Subjects are the workload identities this grant applies to; any one matching is enough.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:Required
	Subjects []Subject `json:"subjects"`

	// Secrets are the secrets this grant covers, by the exact name a workload asks for.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:Required
	// +listType=map
	// +listMapKey=name
	Secrets []SecretGrant `json:"secrets"`

	// Delivery restricts the channels through which the secrets may be delivered.
	// Empty means every channel.
	// +optional
	// +listType=set
	Delivery []Delivery `json:"delivery,omitempty"`

	// Templates render several keys of this grant's secrets into one CSI file each (a .env
	// file, a JDBC URL, a config.yaml). They are written into volumes that name this grant
	// (the volume attribute "grant"), in the same atomic swap as the secrets' own files.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +listType=map
	// +listMapKey=path
	Templates []TemplateFile `json:"templates,omitempty"`
}

// TemplateFile is one file rendered from a template over the grant's secrets.
// +kubebuilder:object:generate=true
type TemplateFile struct {
	// Path is relative to the volume root, with the rules of files[].path.
	// +kubebuilder:validation:Required
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="self.matches('^([^./][^/]*|[.][^./][^/]*)(/([^./][^/]*|[.][^./][^/]*))*$')",message="must be a relative path without a leading \"/\", empty or \".\" components, or components starting with \"..\""
	Path string `json:"path"`

	// Template is Go text/template source over the grant's secrets: {{ .db.password }} or
	// {{ secret "api-key" "token" }}, with a fixed set of functions (see docs/grants.md).
	// +kubebuilder:validation:Required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=16384
	Template string `json:"template"`

	// Mode is the file's permission bits (at most 0777); the default is the volume's.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=511
	// +optional
	Mode *int32 `json:"mode,omitempty"`
}

// Subject is one workload identity pattern: either Namespace and ServiceAccount, or SPIFFEID.
// +kubebuilder:object:generate=true
// +kubebuilder:validation:XValidation:rule="has(self.spiffeID) != (has(self.namespace) || has(self.serviceAccount))",message="set either namespace+serviceAccount or spiffeID, not both and not neither"
// +kubebuilder:validation:XValidation:rule="has(self.spiffeID) || (has(self.namespace) && has(self.serviceAccount))",message="namespace and serviceAccount go together: set both (\"*\" matches any)"
type Subject struct {
	// Namespace is a namespace name, or "*" for any namespace.
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$`
	// +optional
	Namespace string `json:"namespace,omitempty"`

	// ServiceAccount is a service account name, or "*" for any service account.
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^(\*|[a-z0-9]([-a-z0-9.]*[a-z0-9])?)$`
	// +optional
	ServiceAccount string `json:"serviceAccount,omitempty"`

	// SPIFFEID is an exact SPIFFE ID, or a pattern in which whole path segments may be "*"
	// (each matching exactly one segment). The trust domain is never a wildcard.
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.matches('^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._*-]+)+$') && !self.contains('/./') && !self.contains('/../') && !self.endsWith('/.') && !self.endsWith('/..')",message="must be spiffe://<trust-domain>/<path> with a lower-case trust domain and path segments of letters, digits, '.', '-', '_' or a whole-segment \"*\""
	// +optional
	SPIFFEID string `json:"spiffeID,omitempty"`
}

// SecretGrant is one secret clause of a grant.
// +kubebuilder:object:generate=true
type SecretGrant struct {
	// Name is the name a workload asks for. It matches exactly: no prefixes, no globs.
	// +kubebuilder:validation:Required
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$') && !self.contains('..')",message="must be lower case letters, digits, '-', '.' and '_', starting and ending with a letter or digit, without \"..\""
	Name string `json:"name"`

	// Source says where the secret comes from.
	// +kubebuilder:validation:Required
	Source SecretSource `json:"source"`

	// Keys is the subset of the secret's keys delivered; empty means all keys.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=253
	Keys []string `json:"keys,omitempty"`

	// Files is the CSI file layout; empty means one file per key, named after the key.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	Files []FileMapping `json:"files,omitempty"`

	// TTL bounds the lifetime of dynamic credentials issued under this grant.
	// +optional
	TTL *TTLBounds `json:"ttl,omitempty"`

	// Refresh sets how often a static secret is polled for a new version.
	// +optional
	Refresh *RefreshPolicy `json:"refresh,omitempty"`

	// Share says who shares one dynamic credential; the default is ServiceAccount, and Pod for
	// engine pki (a certificate carries its workload's identity; Grant is refused there).
	// +optional
	Share ShareMode `json:"share,omitempty"`

	// PKI shapes the certificate requested from a pki engine: names, key generation.
	// Only valid with engine pki; omitted, the certificate carries the workload's SPIFFE ID
	// as its only SAN and its key is generated on the node.
	// +optional
	PKI *PKIOptions `json:"pki,omitempty"`
}

// PKIKeyGeneration says where a certificate's private key is generated.
// +kubebuilder:validation:Enum=Node;Vault
type PKIKeyGeneration string

const (
	// PKIKeyGenerationNode generates the key in the daemon and sends a CSR to
	// <mount>/sign/<role>: the private key never leaves the node. The default.
	PKIKeyGenerationNode PKIKeyGeneration = "Node"
	// PKIKeyGenerationVault lets Vault generate the key (<mount>/issue/<role>); the role's
	// key_type applies.
	PKIKeyGenerationVault PKIKeyGeneration = "Vault"
)

// PKIKeyType is the kind of key generated on the node.
// +kubebuilder:validation:Enum=ECDSAP256;ECDSAP384;RSA2048
type PKIKeyType string

// Key types.
const (
	PKIKeyTypeECDSAP256 PKIKeyType = "ECDSAP256" // the default
	PKIKeyTypeECDSAP384 PKIKeyType = "ECDSAP384"
	PKIKeyTypeRSA2048   PKIKeyType = "RSA2048"
)

// PKIOptions shapes a workload certificate. The certificate's URI SAN is always the
// workload's SPIFFE ID; names may use the placeholders $(namespace) and $(serviceAccount),
// replaced by the caller's.
// +kubebuilder:object:generate=true
type PKIOptions struct {
	// DNSNames are the DNS SANs, e.g. "$(serviceAccount).$(namespace).svc". A leading "*."
	// label asks for a wildcard (the role must allow it).
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=253
	DNSNames []string `json:"dnsNames,omitempty"`

	// CommonName is the subject CN; default the first DNS name, or none (the role then
	// needs require_cn=false).
	// +kubebuilder:validation:MaxLength=253
	// +optional
	CommonName string `json:"commonName,omitempty"`

	// KeyGeneration is Node (default: CSR, the key never leaves the node) or Vault.
	// +optional
	KeyGeneration PKIKeyGeneration `json:"keyGeneration,omitempty"`

	// KeyType of a node-generated key; default ECDSAP256. Not used with Vault.
	// +optional
	KeyType PKIKeyType `json:"keyType,omitempty"`
}

// SecretSource names where a secret comes from. Exactly one field is set.
// +kubebuilder:validation:MinProperties=1
// +kubebuilder:validation:MaxProperties=1
// +kubebuilder:object:generate=true
type SecretSource struct {
	// Local is the embedded store of dev and single-machine mode.
	// +optional
	Local *LocalSource `json:"local,omitempty"`

	// Vault is a HashiCorp Vault secrets engine.
	// +optional
	Vault *VaultSource `json:"vault,omitempty"`
}

// LocalSource is a secret in the embedded store.
// +kubebuilder:object:generate=true
type LocalSource struct {
	// Name of the secret in the local store; defaults to the secret clause's name.
	// +optional
	Name string `json:"name,omitempty"`
}

// VaultSource is a secret read from or issued by Vault.
// +kubebuilder:object:generate=true
type VaultSource struct {
	// Mount is the path the secrets engine is mounted at, e.g. "secret".
	// +kubebuilder:validation:Required
	Mount string `json:"mount"`

	// Path is the secret's path inside the mount (kv-v1, kv-v2, generic).
	// +optional
	Path string `json:"path,omitempty"`

	// Engine is the kind of secrets engine; the default is kv-v2.
	// +optional
	Engine VaultEngine `json:"engine,omitempty"`

	// Version pins a kv-v2 version; 0 means the latest.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Version int64 `json:"version,omitempty"`

	// Role is the role credentials are issued for (database, pki).
	// +optional
	Role string `json:"role,omitempty"`

	// Namespace is the Vault Enterprise namespace the mount lives in, e.g. "team-a/prod";
	// empty uses the daemon's vault.namespace. Vault's open-source edition has no namespaces:
	// there, reads of a source with a namespace fail instead of reaching the root namespace.
	// +kubebuilder:validation:MaxLength=255
	// +kubebuilder:validation:Pattern=`^[a-zA-Z0-9_-]+(/[a-zA-Z0-9_-]+)*$`
	// +optional
	Namespace string `json:"namespace,omitempty"`
}

// FileMapping places one key of a secret at a path inside the CSI volume.
// +kubebuilder:object:generate=true
type FileMapping struct {
	// Key is the secret key written to the file.
	// +kubebuilder:validation:Required
	Key string `json:"key"`

	// Path is relative to the volume root: no "..", no leading "/", no component starting
	// with "..". The CRD caps it at 1024 bytes (CEL cost budget); grants files allow 4096.
	// +kubebuilder:validation:Required
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="self.matches('^([^./][^/]*|[.][^./][^/]*)(/([^./][^/]*|[.][^./][^/]*))*$')",message="must be a relative path without a leading \"/\", empty or \".\" components, or components starting with \"..\""
	Path string `json:"path"`

	// Mode is the file's permission bits (at most 0777); the default is decided by the CSI
	// layer.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=511
	// +optional
	Mode *int32 `json:"mode,omitempty"`
}

// TTLBounds bounds the TTL requested for dynamic credentials.
// +kubebuilder:object:generate=true
// +kubebuilder:validation:MinProperties=1
// +kubebuilder:validation:XValidation:rule="!has(self.min) || !has(self.max) || duration(self.min) <= duration(self.max)",message="min must not be greater than max"
type TTLBounds struct {
	// Min is the shortest TTL accepted.
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$') && duration(self) > duration('0s')",message="must be a positive duration such as 5m or 1h30m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=64
	// +optional
	Min *metav1.Duration `json:"min,omitempty"`

	// Max is the longest TTL requested.
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$') && duration(self) > duration('0s')",message="must be a positive duration such as 24h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=64
	// +optional
	Max *metav1.Duration `json:"max,omitempty"`
}

// RefreshPolicy sets how a static secret is polled.
// +kubebuilder:object:generate=true
type RefreshPolicy struct {
	// Interval between polls; at least 1s.
	// +kubebuilder:validation:Required
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$') && duration(self) >= duration('1s')",message="must be a duration of at least 1s, such as 30s or 5m"
	Interval metav1.Duration `json:"interval"`
}
