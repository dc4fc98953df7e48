package tpm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// chunkReader hands out at most n bytes per Read, as a stream socket may.
type chunkReader struct {
	r io.Reader
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(p) > c.n {
		p = p[:c.n]
	}
	return c.r.Read(p)
}

// FuzzReadFrame: TPM responses come from a device or a socket this
// process does not control. readFrame must never panic or over-read, and
// what it returns must be exactly the frame its header announces.
func FuzzReadFrame(f *testing.F) {
	ok := make([]byte, 10)
	binary.BigEndian.PutUint16(ok[0:2], 0x8001)
	binary.BigEndian.PutUint32(ok[2:6], 10)
	f.Add(ok, uint16(4096))
	f.Add(ok, uint16(3))
	withBody := []byte{0x80, 0x01, 0, 0, 0, 14, 0, 0, 0, 0, 1, 2, 3, 4}
	f.Add(withBody, uint16(1))
	f.Add([]byte{0x80, 0x01, 0, 0, 0, 9, 0, 0, 0, 0}, uint16(10))             // size below the header
	f.Add([]byte{0x80, 0x01, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}, uint16(10)) // size far too big
	f.Add([]byte{0x80, 0x01, 0, 0, 0x20, 0, 0, 0, 0, 0}, uint16(10))          // truncated body
	f.Add([]byte{0x80}, uint16(1))
	f.Add([]byte{}, uint16(1))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint16) {
		if chunk == 0 {
			chunk = 1
		}
		got, err := readFrame(&chunkReader{r: bytes.NewReader(data), n: int(chunk)})
		if err != nil {
			if got != nil {
				t.Fatalf("error %v with %d bytes", err, len(got))
			}
			return
		}
		if len(got) < headerSize || len(got) > maxResponse {
			t.Fatalf("accepted a %d-byte frame", len(got))
		}
		if size := int(binary.BigEndian.Uint32(got[2:6])); size != len(got) {
			t.Fatalf("frame of %d bytes, header says %d", len(got), size)
		}
		if !bytes.HasPrefix(data, got) {
			t.Fatal("frame is not the start of the stream")
		}
	})
}

// TestReadFrameErrorsNameTheProblem: a short or lying response gives an
// error that says what was wrong, not a bare EOF.
func TestReadFrameErrorsNameTheProblem(t *testing.T) {
	t.Parallel()
	if _, err := readFrame(bytes.NewReader([]byte{0x80, 0x01, 0})); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short header: %v", err)
	}
	if _, err := readFrame(bytes.NewReader([]byte{0x80, 0x01, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})); !errors.Is(err, ErrBadResponse) {
		t.Errorf("huge size field: %v", err)
	}
}
