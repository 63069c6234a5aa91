package host

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/kindlingvm/kindling/snapshot"
	bolt "go.etcd.io/bbolt"
)

// storeFile is the state store's file under --state-dir.
const storeFile = "state.db"

// storeSchema is the layout version written in the meta bucket; a store
// from another layout is refused rather than guessed at.
const storeSchema = "1"

var (
	bucketMeta        = []byte("meta")
	bucketFunctions   = []byte("functions")
	bucketInvocations = []byte("invocations")
	bucketSandboxes   = []byte("sandboxes")
)

// ErrDiskFull is a write refused because the state store's disk is full.
var ErrDiskFull = errors.New("no space left on the state store's disk")

// store is kindlingd's state on local disk: functions, live sandboxes and
// every accepted asynchronous invocation, in one bbolt file. Every write
// is committed (fsync) before the caller is answered.
type store struct {
	db   *bolt.DB
	path string
}

// functionRecord is a registered function version.
type functionRecord struct {
	Spec         json.RawMessage `json:"spec"` // protojson of api.FunctionSpec
	RegisteredNs int64           `json:"registered_ns"`
	Snapshot     string          `json:"snapshot,omitempty"`
	// Seal is the warm snapshot's files as cut (digests and identities).
	Seal *snapshot.Seal `json:"seal,omitempty"`
}

// sandboxRecord is a live sandbox and whom it serves.
type sandboxRecord struct {
	Record
	Function  string `json:"function"`
	Version   string `json:"version"`
	Tenant    string `json:"tenant"`
	StartKind string `json:"start_kind"`
	StartedNs int64  `json:"started_ns"`
}

// invocationRecord is an invocation as stored (asynchronous ones) and as
// kept in memory (all of them).
type invocationRecord struct {
	ID          string `json:"id"`
	Function    string `json:"function"`
	Version     string `json:"version"`
	Tenant      string `json:"tenant"`
	PayloadHash string `json:"payload_hash"`
	Payload     []byte `json:"payload,omitempty"` // kept until it has run
	Async       bool   `json:"async"`
	State       string `json:"state"` // accepted, running, succeeded, failed
	// Sandbox is the instance running it: written before the invocation is
	// sent, so a restarted kindlingd knows where to ask for the result.
	Sandbox      string `json:"sandbox,omitempty"`
	Attempts     int    `json:"attempts"`
	RerunReason  string `json:"rerun_reason,omitempty"`
	Response     []byte `json:"response,omitempty"`
	ErrorType    string `json:"error_type,omitempty"`
	ErrorMessage string `json:"error_message,omitempty"`
	Start        string `json:"start,omitempty"`
	AcceptedNs   int64  `json:"accepted_ns"`
	FinishedNs   int64  `json:"finished_ns,omitempty"`
	QueuedUs     int64  `json:"queued_us,omitempty"`
	StartUs      int64  `json:"start_us,omitempty"`
	RunUs        int64  `json:"run_us,omitempty"`
}

// Invocation states.
const (
	stateAccepted  = "accepted"
	stateRunning   = "running"
	stateSucceeded = "succeeded"
	stateFailed    = "failed"
)

func (r *invocationRecord) finished() bool {
	return r.State == stateSucceeded || r.State == stateFailed
}

// openStore opens (or creates) dir/state.db and checks it whole. A store
// that is corrupt, from another schema or locked by another kindlingd is
// refused with the file named: kindlingd never silently starts empty.
func openStore(dir string) (_ *store, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, storeFile)
	// bbolt panics on some kinds of damage instead of returning an error.
	defer func() {
		if p := recover(); p != nil {
			err = corrupt(path, fmt.Errorf("%v", p))
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second, FreelistType: bolt.FreelistMapType})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("state store %s is locked: another kindlingd is running with --state-dir %s", path, dir)
		}
		return nil, corrupt(path, err)
	}
	// bbolt's default 10 ms wait for more writers to share a commit sat on
	// every start's critical path (the sandbox record is written before the
	// instance serves) and every InvokeAsync's answer; a commit here takes
	// about 0.2 ms, and writers that queue meanwhile still share the next.
	db.MaxBatchDelay = 100 * time.Microsecond
	s := &store{db: db, path: path}
	if err := s.check(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func corrupt(path string, err error) error {
	return fmt.Errorf("state store %s is unreadable (%v): refusing to start. Restore it from a backup, or move it aside to start empty (its accepted invocations would be lost)", path, err)
}

// check verifies every page and the schema, and creates the buckets of a
// new store.
func (s *store) check() error {
	err := s.db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	})
	if err != nil {
		return corrupt(s.path, err)
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			if tx.Bucket(bucketFunctions) != nil {
				return corrupt(s.path, errors.New("meta bucket missing"))
			}
			var err error
			if meta, err = tx.CreateBucket(bucketMeta); err != nil {
				return err
			}
			if err := meta.Put([]byte("schema"), []byte(storeSchema)); err != nil {
				return err
			}
		}
		if v := string(meta.Get([]byte("schema"))); v != storeSchema {
			return fmt.Errorf("state store %s has schema %q, this kindlingd reads %q: refusing to start", s.path, v, storeSchema)
		}
		for _, b := range [][]byte{bucketFunctions, bucketInvocations, bucketSandboxes} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *store) close() error { return s.db.Close() }

// put writes one JSON value; writes from many goroutines share commits.
func (s *store) put(bucket []byte, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	err = s.db.Batch(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(key), b) })
	return s.writeErr(err)
}

func (s *store) delete(bucket []byte, key string) error {
	return s.writeErr(s.db.Batch(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Delete([]byte(key)) }))
}

func (s *store) writeErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("state store %s: %w", s.path, ErrDiskFull)
	}
	return fmt.Errorf("state store %s: %w", s.path, err)
}

// get reads one JSON value; found is false when the key is absent.
func (s *store) get(bucket []byte, key string, v any) (found bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket).Get([]byte(key))
		if b == nil {
			return nil
		}
		found = true
		return json.Unmarshal(b, v)
	})
	if err != nil {
		return found, fmt.Errorf("state store %s: %s/%s: %w", s.path, bucket, key, err)
	}
	return found, nil
}

// each calls fn with every key and raw value of a bucket.
func (s *store) each(bucket []byte, fn func(key string, val []byte) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error { return fn(string(k), v) })
	})
}

// pruneInvocations deletes finished invocations older than cutoff.
func (s *store) pruneInvocations(cutoff time.Time) (int, error) {
	var old [][]byte
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketInvocations).ForEach(func(k, v []byte) error {
			var r invocationRecord
			if json.Unmarshal(v, &r) == nil && r.finished() && r.FinishedNs < cutoff.UnixNano() {
				old = append(old, append([]byte(nil), k...))
			}
			return nil
		})
	})
	if err != nil || len(old) == 0 {
		return 0, err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketInvocations)
		for _, k := range old {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	return len(old), s.writeErr(err)
}
