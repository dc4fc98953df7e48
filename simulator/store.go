package simulator

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"devid/simulator/simapi"
)

// Bucket names. Every value is JSON; keys are IDs (telemetry: big-endian seq).
var (
	bktGroups      = []byte("enrollmentGroups")
	bktEnrollments = []byte("enrollments")
	bktRegs        = []byte("registrations")
	bktDevices     = []byte("devices")
	bktTelemetry   = []byte("telemetry")
	bktRevoked     = []byte("revoked")
	bktMeta        = []byte("meta")
	allBuckets     = [][]byte{bktGroups, bktEnrollments, bktRegs, bktDevices, bktTelemetry, bktRevoked, bktMeta}
)

// storeSchema is written to meta/schema; bump on incompatible changes.
const storeSchema = 1

// store is the bbolt-backed persistence. Callers keep the authoritative
// copy in memory and write through; on start everything is loaded back.
//
// Writes go through one committer goroutine that puts every write queued
// while the previous commit was syncing into the next transaction (group
// commit): one fsync serves many writes. A caller of commit waits until
// its write is durable; a caller of commitAsync is told so by its then,
// which the committer calls only after the transaction is on disk.
type store struct {
	db   *bolt.DB
	reqs chan *writeReq
	quit chan struct{}
	wg   sync.WaitGroup
	// committed, when set (tests), is called with the number of writes
	// of each durable transaction before any of their callers is told.
	committed atomic.Pointer[func(n int)]
}

// maxGroup bounds the writes of one transaction, and the writes queued
// while one commits (the channel's buffer), so a commitAsync caller
// blocks rather than queueing without bound.
const maxGroup = 4096

type writeReq struct {
	fn   func(*bolt.Tx) error
	done chan error
	then func(error) // instead of done: called by the committer
}

func (r *writeReq) finish(err error) {
	if r.then != nil {
		r.then(err)
		return
	}
	r.done <- err
}

// commit runs fn in a write transaction and returns once it is durable.
func (s *store) commit(fn func(*bolt.Tx) error) error {
	r := &writeReq{fn: fn, done: make(chan error, 1)}
	select {
	case s.reqs <- r:
	case <-s.quit:
		return errors.New("state database closed")
	}
	return <-r.done
}

// commitAsync queues fn for a write transaction and returns; then is
// called with its result once the transaction is durable (or failed).
// then runs on the committer goroutine: it must not block, nor wait for
// another write.
func (s *store) commitAsync(fn func(*bolt.Tx) error, then func(error)) {
	r := &writeReq{fn: fn, then: then}
	select {
	case s.reqs <- r:
	case <-s.quit:
		then(errors.New("state database closed"))
	}
}

func (s *store) committer() {
	defer s.wg.Done()
	for {
		var first *writeReq
		select {
		case first = <-s.reqs:
		case <-s.quit:
			return
		}
		group := []*writeReq{first}
	drain:
		for len(group) < maxGroup {
			select {
			case r := <-s.reqs:
				group = append(group, r)
			default:
				break drain
			}
		}
		err := s.db.Update(func(tx *bolt.Tx) error {
			for _, r := range group {
				if err := r.fn(tx); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil {
			s.tellCommitted(len(group))
			for _, r := range group {
				r.finish(nil)
			}
			continue
		}
		// One write failed: run each alone so only it reports the error.
		for _, r := range group {
			err := s.db.Update(r.fn)
			if err == nil {
				s.tellCommitted(1)
			}
			r.finish(err)
		}
	}
}

func (s *store) tellCommitted(n int) {
	if f := s.committed.Load(); f != nil {
		(*f)(n)
	}
}

func openStore(dir string) (*store, error) {
	db, err := bolt.Open(filepath.Join(dir, "sim.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open state database: %w (is another devid-sim using this state dir?)", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		m := tx.Bucket(bktMeta)
		if v := m.Get([]byte("schema")); v != nil && string(v) != fmt.Sprint(storeSchema) {
			return fmt.Errorf("state database schema %s, this devid-sim understands %d", v, storeSchema)
		}
		return m.Put([]byte("schema"), []byte(fmt.Sprint(storeSchema)))
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	st := &store{db: db, reqs: make(chan *writeReq, maxGroup), quit: make(chan struct{})}
	st.wg.Add(1)
	go st.committer()
	return st, nil
}

func (s *store) close() error {
	close(s.quit)
	s.wg.Wait()
	return s.db.Close()
}

func (s *store) put(bucket []byte, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.commit(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(key), b) })
}

// putRaw stores an already-marshalled value (marshal under the owner's
// lock, write after releasing it, so fsyncs batch and never block hooks).
func (s *store) putRaw(bucket []byte, key string, b []byte) error {
	return s.commit(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(key), b) })
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only simulator-built values are marshalled
	}
	return b
}

func (s *store) del(bucket []byte, key string) error {
	return s.commit(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Delete([]byte(key)) })
}

func (s *store) getMeta(key string) []byte {
	var out []byte
	_ = s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bktMeta).Get([]byte(key)); v != nil {
			out = append([]byte(nil), v...)
		}
		return nil
	})
	return out
}

func (s *store) putMeta(key string, v []byte) error {
	return s.commit(func(tx *bolt.Tx) error { return tx.Bucket(bktMeta).Put([]byte(key), v) })
}

// each calls fn for every value in bucket.
func (s *store) each(bucket []byte, fn func(k, v []byte) error) error {
	return s.db.View(func(tx *bolt.Tx) error { return tx.Bucket(bucket).ForEach(fn) })
}

// appendTelemetry stores rec with the next sequence number and trims the
// bucket to max records (oldest first); it returns once rec is durable.
func (s *store) appendTelemetry(rec *simapi.TelemetryRecord, max int) error {
	return s.commit(telemetryWrite(rec, max))
}

// appendTelemetryAsync is appendTelemetry that returns at once and calls
// then when rec is durable (or could not be stored); see commitAsync.
func (s *store) appendTelemetryAsync(rec *simapi.TelemetryRecord, max int, then func(error)) {
	s.commitAsync(telemetryWrite(rec, max), then)
}

func telemetryWrite(rec *simapi.TelemetryRecord, max int) func(*bolt.Tx) error {
	return func(tx *bolt.Tx) error {
		b := tx.Bucket(bktTelemetry)
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		rec.Seq = seq
		v, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		if err := b.Put(seqKey(seq), v); err != nil {
			return err
		}
		if max <= 0 {
			return nil
		}
		// Keys are consecutive sequence numbers (appends take the next,
		// trimming removes the oldest), so the count is last-first+1;
		// b.Stats() would walk every page on every message.
		c := b.Cursor()
		k, _ := c.First()
		n := int(seq-binary.BigEndian.Uint64(k)) + 1 - max
		if n < max/10 {
			return nil
		}
		// Re-seek the first key after each delete: bbolt's Cursor.Next
		// after Delete skips a key, which left every other record behind.
		for ; k != nil && n > 0; k, _ = c.First() {
			if err := c.Delete(); err != nil {
				return err
			}
			n--
		}
		return nil
	}
}

func seqKey(n uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], n)
	return k[:]
}

// telemetry returns records with seq > after matching filter, at most limit.
func (s *store) telemetry(after uint64, limit int, match func(*simapi.TelemetryRecord) bool) ([]simapi.TelemetryRecord, error) {
	var out []simapi.TelemetryRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bktTelemetry).Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil; k, v = c.Next() {
			var r simapi.TelemetryRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			if match(&r) {
				out = append(out, r)
				if limit > 0 && len(out) >= limit {
					break
				}
			}
		}
		return nil
	})
	return out, err
}

func (s *store) clearTelemetry() error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bktTelemetry)
		seq := b.Sequence()
		if err := tx.DeleteBucket(bktTelemetry); err != nil {
			return err
		}
		nb, err := tx.CreateBucket(bktTelemetry)
		if err != nil {
			return err
		}
		return nb.SetSequence(seq) // sequence numbers never go back
	})
}
