package dps

import (
	"errors"
	"net"
	"sync"
	"time"
)

// batchConn is the connection paho writes to. A Write copies the packet
// into a pending buffer and returns; one goroutine writes the buffer to
// the TLS connection whenever it holds bytes. Packets paho writes while
// a TLS write is under way therefore leave together, in one TLS record
// and one system call, instead of one each: under load that was a fifth
// of the agent's CPU per message (docs/benchmarks.md). An idle
// connection writes each packet at once, as before.
//
// The first read or write error also goes to onError, so the session
// learns of a lost connection from the socket itself: paho stays silent
// when its reader fails with "use of closed network connection", which a
// hub closing the connection can cause while paho's writer fails at the
// same moment (TestHubThrottlingDrain saw such a connection left for
// dead, no loss reported, until the keepalive).
type batchConn struct {
	net.Conn
	onError   func(error)
	errorOnce sync.Once

	mu      sync.Mutex
	cond    *sync.Cond // signalled when the buffer drains or the flusher stops
	buf     []byte     // pending bytes, in write order
	err     error      // the first write error: every later Write returns it
	closing bool
	kick    chan struct{}
	stopped chan struct{} // closed when the flusher returns
}

// batchLimit bounds the pending bytes: a Write waits while the buffer
// holds this much, as a Write on a full socket would.
const batchLimit = 64 << 10

// closeFlushWait bounds how long Close waits for pending bytes (paho's
// DISCONNECT) to go out before it closes the connection under them.
const closeFlushWait = 2 * time.Second

var errBatchConnClosed = errors.New("dps: connection closed")

func newBatchConn(c net.Conn, onError func(error)) *batchConn {
	b := &batchConn{Conn: c, onError: onError, kick: make(chan struct{}, 1), stopped: make(chan struct{})}
	b.cond = sync.NewCond(&b.mu)
	go b.flusher()
	return b
}

// Read reads from the connection and reports its first error.
func (b *batchConn) Read(p []byte) (int, error) {
	n, err := b.Conn.Read(p)
	if err != nil {
		b.failed(err)
	}
	return n, err
}

func (b *batchConn) failed(err error) {
	if b.onError != nil {
		b.errorOnce.Do(func() { b.onError(err) })
	}
}

// Write queues p; it fails only once an earlier write failed or the
// connection is closed.
func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.buf) >= batchLimit && b.err == nil && !b.closing {
		b.cond.Wait()
	}
	switch {
	case b.err != nil:
		return 0, b.err
	case b.closing:
		return 0, errBatchConnClosed
	}
	b.buf = append(b.buf, p...)
	wake(b.kick)
	return len(p), nil
}

// flusher writes the pending bytes until the connection closes or a
// write fails; a failed write closes the connection, so paho's reader
// sees the loss too.
func (b *batchConn) flusher() {
	defer close(b.stopped)
	var out []byte
	for range b.kick {
		for {
			b.mu.Lock()
			if len(b.buf) == 0 {
				done := b.closing
				b.cond.Broadcast()
				b.mu.Unlock()
				if done {
					return
				}
				break
			}
			out, b.buf = b.buf, out[:0]
			b.cond.Broadcast()
			b.mu.Unlock()
			// The flusher owns the write deadline: paho's, set around
			// each packet it hands over, would race this write.
			_ = b.Conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			if _, err := b.Conn.Write(out); err != nil {
				b.mu.Lock()
				b.err = err
				b.cond.Broadcast()
				b.mu.Unlock()
				b.failed(err)
				b.Conn.Close()
				return
			}
		}
	}
}

// SetWriteDeadline is ignored: each write to the connection gets
// writeTimeout from the flusher instead (paho sets one around every
// packet, which only reaches the buffer).
func (b *batchConn) SetWriteDeadline(time.Time) error { return nil }

// SetDeadline sets the read deadline (paho bounds its CONNECT exchange
// with it); see SetWriteDeadline.
func (b *batchConn) SetDeadline(t time.Time) error { return b.Conn.SetReadDeadline(t) }

// Close sends what is pending (for at most closeFlushWait), then closes
// the connection.
func (b *batchConn) Close() error {
	b.mu.Lock()
	if b.closing {
		b.mu.Unlock()
		return b.Conn.Close()
	}
	b.closing = true
	b.cond.Broadcast()
	b.mu.Unlock()
	wake(b.kick)
	t := time.NewTimer(closeFlushWait)
	defer t.Stop()
	select {
	case <-b.stopped:
	case <-t.C:
	}
	err := b.Conn.Close()
	<-b.stopped
	return err
}
