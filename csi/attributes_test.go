package csi

import (
	"errors"
	"strings"
	"testing"
)

func TestParseVolumeContext_badInput(t *testing.T) {
	base := func(attrs map[string]string) map[string]string {
		return volumeContext("p", "uid-1", "tok-sekrit", attrs)
	}
	many := make([]string, 1000)
	for i := range many {
		many[i] = "s" + strings.Repeat("x", i%5) + string(rune('a'+i%26))
	}
	cases := []struct {
		name string
		vc   map[string]string
		want string // substring of the error
	}{
		{"empty context", map[string]string{}, "volume_context is empty"},
		{"no secrets or grant", base(nil), "exactly one of"},
		{"both secrets and grant", base(map[string]string{AttrSecrets: "db", AttrGrant: "g"}), "exactly one of"},
		{"unknown attribute", base(map[string]string{AttrSecrets: "db", "secret": "x"}), `unknown attribute "secret"`},
		{"bad secret name", base(map[string]string{AttrSecrets: "db,../etc"}), "entry 2"},
		{"upper case name", base(map[string]string{AttrSecrets: "DB"}), "lower case"},
		{"empty entry", base(map[string]string{AttrSecrets: "db,,x"}), "must not be empty"},
		{"duplicate secret", base(map[string]string{AttrSecrets: "db, db"}), "twice"},
		{"1000 secrets", base(map[string]string{AttrSecrets: strings.Join(many, ",")}), "at most 64"},
		{"file ../x", base(map[string]string{AttrSecrets: "db", AttrFiles: "db/k=../x"}), `".." components`},
		{"file /abs", base(map[string]string{AttrSecrets: "db", AttrFiles: "db/k=/etc/passwd"}), "relative"},
		{"file a/../../b", base(map[string]string{AttrSecrets: "db", AttrFiles: "db/k=a/../../b"}), `".." components`},
		{"file ..data", base(map[string]string{AttrSecrets: "db", AttrFiles: "db/k=..data"}), `start with ".."`},
		{"file NUL", base(map[string]string{AttrSecrets: "db", AttrFiles: "db/k=a\x00b"}), "NUL"},
		{"file 256 bytes", base(map[string]string{AttrSecrets: "db", AttrFiles: "db/k=" + strings.Repeat("a", 256)}), "at most 255"},
		{"file socket name", base(map[string]string{AttrSecrets: "db", AttrFiles: "db/k=keywarden.sock"}), "reserved"},
		{"files without =", base(map[string]string{AttrSecrets: "db", AttrFiles: "db/k"}), "want <secret>/<key>=<file path>"},
		{"files without key", base(map[string]string{AttrSecrets: "db", AttrFiles: "db=x"}), "want <secret>/<key>=<file path>"},
		{"files mapped twice", base(map[string]string{AttrSecrets: "db", AttrFiles: "db/k=x,db/k=y"}), "mapped twice"},
		{"mode over 0777", base(map[string]string{AttrSecrets: "db", AttrFileMode: "01777"}), "at most 0777"},
		{"mode not octal", base(map[string]string{AttrSecrets: "db", AttrFileMode: "0999"}), "octal"},
		{"mode owner cannot read", base(map[string]string{AttrSecrets: "db", AttrFileMode: "0040"}), "owner"},
		{"bad encoding", base(map[string]string{AttrSecrets: "db", AttrEncoding: "hex"}), "encoding"},
		{"bad bundle", base(map[string]string{AttrSecrets: "db", AttrBundle: "../b.json"}), "bundle"},
		{"bad apiSocket", base(map[string]string{AttrSecrets: "db", AttrAPISocket: "yes"}), "apiSocket"},
		{"no pod info", map[string]string{AttrSecrets: "db", CtxTokens: `{"keywarden":{"token":"t"}}`}, "podInfoOnMount"},
		{"pod UID with slash", func() map[string]string {
			m := base(map[string]string{AttrSecrets: "db"})
			m[CtxPodUID] = "../x"
			return m
		}(), "pod UID"},
		{"not ephemeral", func() map[string]string {
			m := base(map[string]string{AttrSecrets: "db"})
			m[CtxEphemeral] = "false"
			return m
		}(), "ephemeral"},
		{"no token", func() map[string]string {
			m := base(map[string]string{AttrSecrets: "db"})
			delete(m, CtxTokens)
			return m
		}(), "tokenRequests"},
		{"token JSON broken", func() map[string]string {
			m := base(map[string]string{AttrSecrets: "db"})
			m[CtxTokens] = `{"keywarden":{"token":"tok-sekrit"`
			return m
		}(), "not the JSON"},
		{"token other audience", func() map[string]string {
			m := base(map[string]string{AttrSecrets: "db"})
			m[CtxTokens] = `{"vault":{"token":"tok-sekrit"}}`
			return m
		}(), `no token for audience "keywarden"`},
		{"oversized value", base(map[string]string{AttrSecrets: strings.Repeat("a", MaxAttrLen+1)}), "bytes, at most"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseVolumeContext(tc.vc, "keywarden")
			if !errors.Is(err, ErrInvalidRequest) {
				t.Fatalf("err = %v, want ErrInvalidRequest", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %q, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "sekrit") {
				t.Errorf("error repeats the token: %q", err)
			}
		})
	}
}

func TestParseVolumeContext_valid(t *testing.T) {
	vc := volumeContext("p", "uid-1", "tok", map[string]string{
		AttrSecrets: "db, api-key", AttrFiles: "db/password=conf/db.pass", AttrFileMode: "0440",
		AttrEncoding: "base64", AttrBundle: "bundle.json", AttrAPISocket: "false",
	})
	got, err := ParseVolumeContext(vc, "keywarden")
	if err != nil {
		t.Fatal(err)
	}
	want := Request{Secrets: []string{"db", "api-key"}, Files: map[string]string{"db/password": "conf/db.pass"}, Mode: 0o440,
		Encoding: EncodingBase64, Bundle: "bundle.json", APISocket: false}
	if !got.Request.Equal(want) {
		t.Errorf("request = %+v, want %+v", got.Request, want)
	}
	if got.Pod.UID != "uid-1" || got.Token.Reveal() != "tok" {
		t.Errorf("pod = %+v", got.Pod)
	}
	g, err := ParseVolumeContext(volumeContext("p", "uid-1", "tok", map[string]string{AttrGrant: "demo-app"}), "keywarden")
	if err != nil || g.Request.Grant != "demo-app" || !g.Request.APISocket || g.Request.Encoding != EncodingRaw {
		t.Errorf("grant request = %+v, %v", g.Request, err)
	}
}

func FuzzParseVolumeContext(f *testing.F) {
	f.Add("db,api-key", "db/k=x", "0400", "raw", "b.json", "uid-1", `{"keywarden":{"token":"t"}}`)
	f.Add("", "a/b=../c", "777", "base64", "..data", "../x", `{`)
	f.Fuzz(func(t *testing.T, secrets, files, mode, encoding, bundle, uid, tokens string) {
		vc := map[string]string{AttrSecrets: secrets, AttrFiles: files, AttrFileMode: mode, AttrEncoding: encoding, AttrBundle: bundle,
			CtxPodName: "p", CtxPodNamespace: "ns", CtxPodUID: uid, CtxTokens: tokens}
		got, err := ParseVolumeContext(vc, "keywarden")
		if err != nil {
			if !errors.Is(err, ErrInvalidRequest) {
				t.Fatalf("error without ErrInvalidRequest: %v", err)
			}
			return
		}
		// Whatever is accepted must be safe to lay out in a volume.
		for _, p := range got.Request.Files {
			if validateVolumePath(p) != nil || strings.HasPrefix(p, "/") || strings.Contains(p, "..") && strings.Contains("/"+p+"/", "/../") {
				t.Fatalf("accepted unsafe path %q", p)
			}
		}
		if got.Request.Bundle != "" && validateVolumePath(got.Request.Bundle) != nil {
			t.Fatalf("accepted unsafe bundle %q", got.Request.Bundle)
		}
		if got.Request.Mode > 0o777 || len(got.Request.Secrets) > MaxSecrets || validatePodUID(got.Pod.UID) != nil {
			t.Fatalf("accepted out-of-range request %+v", got.Request)
		}
	})
}
