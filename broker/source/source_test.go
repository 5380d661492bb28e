package source

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestValue_neverPrints(t *testing.T) {
	const secret = "hunter2-secret-bytes"
	v := Value(secret)
	s := &Secret{Data: map[string]Value{"password": v}, Version: "1"}
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	log.Info("x", slog.Any("value", v), slog.Any("secret", s))
	js, _ := json.Marshal(s)
	outs := []string{
		fmt.Sprint(v), fmt.Sprintf("%v %+v %#v %s %q %x %X %d", v, v, v, v, v, v, v, v),
		fmt.Sprintf("%v %+v", s, *s), logs.String(), string(js),
		fmt.Errorf("wrap: %v", v).Error(),
	}
	for _, out := range outs {
		if strings.Contains(out, secret) || strings.Contains(out, fmt.Sprintf("%x", secret)) {
			t.Fatalf("secret leaked in %q", out)
		}
	}
}

func TestSecret_Select(t *testing.T) {
	s := &Secret{Data: map[string]Value{"a": Value("1"), "b": Value("2")}, Version: "7"}
	got, err := s.Select([]string{"b"})
	if err != nil || len(got.Data) != 1 || string(got.Data["b"]) != "2" || got.Version != "7" {
		t.Fatalf("select b: %v %v", got.Keys(), err)
	}
	all, err := s.Select(nil)
	if err != nil || len(all.Data) != 2 {
		t.Fatalf("select all: %v %v", all.Keys(), err)
	}
	if _, err := s.Select([]string{"c"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing key: %v", err)
	}
	all.Data["a"][0] = 'X'
	if string(s.Data["a"]) != "1" {
		t.Fatal("Select shares memory with the original")
	}
}
