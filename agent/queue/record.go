package queue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Record layout on disk (little endian):
//
//	0  uint32  magic 0x44514431 ("DQD1")
//	4  uint32  payload length
//	8  uint64  sequence number
//	16 uint32  CRC-32C of bytes 4..16 and the payload
//	20 payload
const (
	recordMagic  = 0x31445144
	headerSize   = 20
	MaxPayload   = 1 << 20
	crcTableSeed = crc32.Castagnoli
)

var crcTable = crc32.MakeTable(crcTableSeed)

// Errors from the record decoder.
var (
	errShort    = errors.New("truncated record")
	errMagic    = errors.New("bad record magic")
	errTooLarge = errors.New("record length over the limit")
	errChecksum = errors.New("record checksum mismatch")
)

// Record is one queued message.
type Record struct {
	Seq     uint64
	Payload []byte
}

func encodeRecord(seq uint64, payload []byte) []byte {
	b := make([]byte, headerSize+len(payload))
	binary.LittleEndian.PutUint32(b[0:], recordMagic)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(payload)))
	binary.LittleEndian.PutUint64(b[8:], seq)
	copy(b[headerSize:], payload)
	binary.LittleEndian.PutUint32(b[16:], checksum(b[4:16], payload))
	return b
}

// recLen is the payload length in a record header (b holds at least 8 bytes).
func recLen(b []byte) uint32 { return binary.LittleEndian.Uint32(b[4:]) }

// hasMagic reports whether b starts with the record magic.
func hasMagic(b []byte) bool { return binary.LittleEndian.Uint32(b) == recordMagic }

func checksum(hdr, payload []byte) uint32 {
	c := crc32.Update(0, crcTable, hdr)
	return crc32.Update(c, crcTable, payload)
}

// decodeRecord parses one record at the start of b and returns it with
// the number of bytes it used. The payload aliases b.
func decodeRecord(b []byte) (Record, int, error) {
	if len(b) < headerSize {
		return Record{}, 0, errShort
	}
	if binary.LittleEndian.Uint32(b[0:]) != recordMagic {
		return Record{}, 0, errMagic
	}
	n := binary.LittleEndian.Uint32(b[4:])
	if n > MaxPayload {
		return Record{}, 0, fmt.Errorf("%w: %d bytes", errTooLarge, n)
	}
	if len(b) < headerSize+int(n) {
		return Record{}, 0, errShort
	}
	payload := b[headerSize : headerSize+int(n)]
	if binary.LittleEndian.Uint32(b[16:]) != checksum(b[4:16], payload) {
		return Record{}, 0, errChecksum
	}
	return Record{Seq: binary.LittleEndian.Uint64(b[8:]), Payload: payload}, headerSize + int(n), nil
}

// readRecordAt reads the record at off. io.EOF means a clean end.
func readRecordAt(f io.ReaderAt, off int64) (Record, int, error) {
	var hdr [headerSize]byte
	n, err := f.ReadAt(hdr[:], off)
	if n == 0 && err == io.EOF {
		return Record{}, 0, io.EOF
	}
	if n < headerSize {
		return Record{}, 0, errShort
	}
	plen := recLen(hdr[:])
	if plen > MaxPayload {
		return Record{}, 0, errTooLarge
	}
	buf := make([]byte, headerSize+plen)
	copy(buf, hdr[:])
	if plen > 0 {
		if m, _ := f.ReadAt(buf[headerSize:], off+headerSize); m < int(plen) {
			return Record{}, 0, errShort
		}
	}
	return decodeRecord(buf)
}
