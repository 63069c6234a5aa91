package host

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestStoreRoundTripAndPrune(t *testing.T) {
	dir := t.TempDir()
	s, err := openStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	rec := invocationRecord{ID: "a", State: stateSucceeded, FinishedNs: 1}
	if err := s.put(bucketInvocations, "a", rec); err != nil {
		t.Fatal(err)
	}
	s.put(bucketInvocations, "b", invocationRecord{ID: "b", State: stateAccepted})
	s.close()
	s, err = openStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	var got invocationRecord
	if found, err := s.get(bucketInvocations, "a", &got); !found || err != nil || got.State != stateSucceeded {
		t.Fatalf("reopened: %v %v %v", found, err, got)
	}
	if n, err := s.pruneInvocations(time.Now()); n != 1 || err != nil {
		t.Fatalf("prune: %d %v (the unfinished one must stay)", n, err)
	}
	if found, _ := s.get(bucketInvocations, "b", &got); !found {
		t.Fatal("an unfinished invocation was pruned")
	}
}

func TestStoreRefusesDamageNamingTheFile(t *testing.T) {
	dir := t.TempDir()
	s, err := openStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		s.put(bucketInvocations, strings.Repeat("k", i+1), invocationRecord{ID: "x", Payload: make([]byte, 1000)})
	}
	s.close()
	path := filepath.Join(dir, storeFile)
	b, _ := os.ReadFile(path)
	for i := 0; i < len(b); i += 5 {
		b[i] ^= 0xff
	}
	os.WriteFile(path, b, 0o600)
	_, err = openStore(dir)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "refusing to start") {
		t.Fatalf("damaged store: %v", err)
	}
	// Never reset: the damaged bytes are left for the operator.
	if after, _ := os.ReadFile(path); string(after) != string(b) {
		t.Fatal("the damaged store was modified")
	}
}

func TestStoreRefusesOtherSchemaAndSecondDaemon(t *testing.T) {
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, storeFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		b, _ := tx.CreateBucket(bucketMeta)
		return b.Put([]byte("schema"), []byte("99"))
	})
	db.Close()
	if _, err := openStore(dir); err == nil || !strings.Contains(err.Error(), `schema "99"`) {
		t.Fatalf("other schema: %v", err)
	}
	dir2 := t.TempDir()
	s, err := openStore(dir2)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if _, err := openStore(dir2); err == nil || !strings.Contains(err.Error(), "another kindlingd") {
		t.Fatalf("second opener: %v", err)
	}
}
