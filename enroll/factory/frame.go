package factory

import (
	"bytes"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
)

// Wire constants. docs/factory-protocol.md is the normative description.
const (
	// ProtocolVersion is reported by HELLO.
	ProtocolVersion = 1
	// MaxLine is the longest frame in bytes, not counting the terminator.
	MaxLine = 256
	// Chunk is the most payload bytes carried by one DATA frame (192
	// base64 characters), so every frame stays under MaxLine.
	Chunk = 144
	// ProtocolV2 is the version a jig asks for with "HELLO 2" on a device
	// whose HELLO offers v2=1 (docs/factory-protocol.md, section 12).
	ProtocolV2 = 2
	// ChunkV2 is Chunk in a v2 session: 216 base64 characters, so that
	// the longest DATA frame ("999999 OK ATTEST DATA 16383 ...") still
	// fits MaxLine.
	ChunkV2 = 162
	// MaxSeq is the largest sequence number; the jig wraps to 1 after it.
	MaxSeq = 999999
	// MaxPayload bounds a CSR or certificate chain moved over the bus.
	MaxPayload = 16 << 10
)

// NoSeq is the sequence number of a NAK for a frame whose own sequence
// number could not be trusted; it is written as "-".
const NoSeq = -1

// Frame is one line on the bus: "SEQ VERB ARG... *CRC".
type Frame struct {
	Seq  int
	Verb string
	Args []string
	// CRC is false for a frame a person typed without a CRC; only HELLO
	// and STATUS are accepted that way.
	CRC bool
}

// NAK reasons for frames that could not be read at all. The device sends
// these with sequence "-" when the sequence number itself is suspect.
const (
	ReasonTooLong    = "too-long"    // line longer than MaxLine
	ReasonBadChar    = "bad-char"    // a byte outside printable ASCII
	ReasonSyntax     = "syntax"      // not "SEQ VERB [ARGS] *CRC"
	ReasonCRC        = "crc"         // CRC does not match
	ReasonCRCMissing = "crc-missing" // no CRC on a command that needs one
	ReasonTimeout    = "timeout"     // half a frame, then silence
)

// FrameError is a frame that could not be parsed; Reason is one of the
// Reason* constants and becomes the NAK reason.
type FrameError struct {
	Reason string
	Detail string
	// Seq is the frame's sequence number if it could be read, else NoSeq.
	Seq int
}

func (e *FrameError) Error() string { return "bad frame: " + e.Reason + ": " + e.Detail }

// Checksum is the frame CRC: CRC-32/ISO-HDLC (the zlib, PNG and Ethernet
// CRC; Python's zlib.crc32) of the bytes before " *".
func Checksum(b []byte) uint32 { return crc32.ChecksumIEEE(b) }

// Encode renders a frame with its CRC and a trailing "\n". Arguments must
// be non-empty printable ASCII without spaces; Encode replaces anything
// else, so a detail string built from an error can never break framing.
func Encode(seq int, verb string, args ...string) []byte {
	var b bytes.Buffer
	if seq == NoSeq {
		b.WriteString("-")
	} else {
		b.WriteString(strconv.Itoa(seq))
	}
	b.WriteByte(' ')
	b.WriteString(verb)
	for _, a := range args {
		b.WriteByte(' ')
		b.WriteString(sanitize(a))
	}
	sum := Checksum(b.Bytes())
	fmt.Fprintf(&b, " *%08x\n", sum)
	return b.Bytes()
}

// EncodeFit is Encode for a reply whose arguments after the first keep
// are human text, which may echo the request: when the frame would exceed
// MaxLine, that text is cut, ending in "...", so that the frame fits. A
// shortened explanation beats a reply the jig must refuse as too long. If
// even the kept arguments do not fit, the reply is a NAK internal.
func EncodeFit(seq int, verb string, keep int, args ...string) []byte {
	b := Encode(seq, verb, args...)
	over := len(b) - 1 - MaxLine
	if over <= 0 {
		return b
	}
	keep = min(keep, len(args))
	words := make([]string, 0, len(args)-keep)
	for _, a := range args[keep:] {
		words = append(words, sanitize(a))
	}
	need := over + len("...")
	for need > 0 && len(words) > 0 {
		last := words[len(words)-1]
		if len(last) > need {
			words[len(words)-1] = last[:len(last)-need]
			need = 0
			break
		}
		words = words[:len(words)-1]
		need -= len(last) + 1 // the word and the space before it
	}
	if len(words) == 0 {
		words = []string{""}
		need++ // the space before "..."
	}
	if need <= 0 {
		words[len(words)-1] += "..."
		b = Encode(seq, verb, append(append([]string(nil), args[:keep]...), words...)...)
		if len(b)-1 <= MaxLine {
			return b
		}
	}
	return Encode(seq, "NAK", ReasonInternal, "reply", "too", "long")
}

// sanitize maps an argument onto the token alphabet: printable ASCII, no
// spaces (spaces become '_'), never empty.
func sanitize(a string) string {
	if a == "" {
		return "-"
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r == ' ':
			return '_'
		case r < 0x21 || r > 0x7e:
			return '?'
		}
		return r
	}, a)
}

// Words splits free text (an error message) into frame arguments.
func Words(s string) []string { return strings.Fields(sanitizeText(s)) }

func sanitizeText(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, s)
}

// ParseFrame parses one line (without its terminator). Errors are
// *FrameError.
func ParseFrame(line []byte) (Frame, error) {
	if len(line) > MaxLine {
		return Frame{}, &FrameError{Reason: ReasonTooLong, Detail: fmt.Sprintf("%d bytes, max %d", len(line), MaxLine), Seq: NoSeq}
	}
	for i, c := range line {
		if c < 0x20 || c > 0x7e {
			return Frame{}, &FrameError{Reason: ReasonBadChar, Detail: fmt.Sprintf("byte 0x%02x at offset %d", c, i), Seq: NoSeq}
		}
	}
	body, hasCRC := line, false
	if i := bytes.LastIndex(line, []byte(" *")); i >= 0 {
		body, hasCRC = line[:i], true
		crc := line[i+2:]
		want, err := strconv.ParseUint(string(crc), 16, 32)
		if err != nil || len(crc) != 8 {
			return Frame{}, &FrameError{Reason: ReasonSyntax, Detail: fmt.Sprintf("CRC field %q is not 8 hex digits", crc), Seq: NoSeq}
		}
		if got := Checksum(body); got != uint32(want) {
			return Frame{}, &FrameError{Reason: ReasonCRC, Detail: fmt.Sprintf("computed %08x, frame says %s", got, crc), Seq: NoSeq}
		}
	}
	// Only now is the sequence number trustworthy (or the frame is unchecked).
	f := strings.Split(string(body), " ")
	if len(f) < 2 {
		return Frame{}, &FrameError{Reason: ReasonSyntax, Detail: "want SEQ VERB [ARGS] *CRC", Seq: NoSeq}
	}
	seq := NoSeq
	if f[0] != "-" {
		n, err := strconv.Atoi(f[0])
		if err != nil || n < 0 || n > MaxSeq || len(f[0]) > 6 || f[0][0] == '+' {
			return Frame{}, &FrameError{Reason: ReasonSyntax, Detail: fmt.Sprintf("sequence %q is not a number 0..%d", f[0], MaxSeq), Seq: NoSeq}
		}
		seq = n
	}
	for i, w := range f[1:] {
		if w == "" {
			return Frame{}, &FrameError{Reason: ReasonSyntax, Detail: fmt.Sprintf("empty field %d (double space?)", i+2), Seq: seq}
		}
	}
	return Frame{Seq: seq, Verb: strings.ToUpper(f[1]), Args: f[2:], CRC: hasCRC}, nil
}
