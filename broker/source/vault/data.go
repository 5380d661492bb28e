package vault

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/vaultref"
)

// errMalformed means a 2xx answer did not have the expected shape.
var errMalformed = errors.New("malformed vault response")

// decodeData turns a Vault data object into secret data. Strings are taken as is, numbers and
// booleans as their JSON text, arrays of strings (a PKI ca_chain) joined by newlines, anything
// else as compact JSON. Keys that are not valid file names are dropped (and counted) rather
// than delivered under a name that the CSI layer would refuse or that could escape a volume.
func decodeData(raw json.RawMessage) (map[string]source.Value, int, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, 0, fmt.Errorf("%w: no data", errMalformed)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, 0, fmt.Errorf("%w: data is not an object", errMalformed)
	}
	out := make(map[string]source.Value, len(m))
	dropped := 0
	for k, v := range m {
		if !vaultref.ValidKey(k) {
			dropped++
			continue
		}
		b, err := valueBytes(v)
		if err != nil {
			return nil, 0, err
		}
		out[k] = b
	}
	return out, dropped, nil
}

func valueBytes(v any) ([]byte, error) {
	switch x := v.(type) {
	case string:
		return []byte(x), nil
	case json.Number:
		return []byte(x.String()), nil
	case bool:
		if x {
			return []byte("true"), nil
		}
		return []byte("false"), nil
	case nil:
		return []byte{}, nil
	case []any:
		strs := make([]string, 0, len(x))
		for _, e := range x {
			s, ok := e.(string)
			if !ok {
				return json.Marshal(x)
			}
			strs = append(strs, s)
		}
		return []byte(strings.Join(strs, "\n")), nil
	default:
		b, err := json.Marshal(x)
		if err != nil {
			return nil, fmt.Errorf("%w: value cannot be encoded", errMalformed)
		}
		return b, nil
	}
}

// contentVersion is a version for data that has none of its own (KV v1, static generic
// reads): an HMAC of the sorted keys and values under a key that lives only in this process,
// so a version in an audit record cannot be used to guess a low-entropy value offline.
func contentVersion(key []byte, data map[string]source.Value) string {
	h := hmac.New(sha256.New, key)
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "%d:%s%d:", len(k), k, len(data[k]))
		h.Write(data[k])
	}
	return "h-" + hex.EncodeToString(h.Sum(nil))[:16]
}

// shortHash names a lease id in versions and store keys.
func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:24]
}
