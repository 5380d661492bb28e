package store

import (
	"bytes"
	"fmt"
	"testing"
)

func BenchmarkDB_Get(b *testing.B) {
	cfg, _ := testConfig(b)
	db := mustOpen(b, cfg)
	value := bytes.Repeat([]byte{'v'}, 256)
	for i := range 1000 {
		if err := db.Put("secrets", fmt.Sprintf("ns/sa/secret-%04d", i), value); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(value)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := db.Get("secrets", fmt.Sprintf("ns/sa/secret-%04d", i%1000)); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkDB_Put measures one durable (fsynced) transaction per Put.
func BenchmarkDB_Put(b *testing.B) {
	cfg, _ := testConfig(b)
	db := mustOpen(b, cfg)
	value := bytes.Repeat([]byte{'v'}, 256)
	b.SetBytes(int64(len(value)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := db.Put("secrets", fmt.Sprintf("ns/sa/secret-%04d", i%1000), value); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
