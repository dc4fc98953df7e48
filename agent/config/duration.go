package config

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// Duration is a time.Duration written in TOML as a string with a unit,
// like "30s" or "1h30m". A bare number is refused: 30 would be 30ns.
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText writes the Go duration syntax.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText accepts Go duration syntax ("90s", "1h30m").
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration like \"30s\" or \"1h30m\"", b)
	}
	*d = Duration(v)
	return nil
}

func jsonValid(s string) bool { return json.Valid([]byte(s)) }

func ioReadFull(r io.Reader, b []byte) (int, error) { return io.ReadFull(r, b) }

// TOML returns the effective configuration as a TOML document.
func (c *Config) TOML() ([]byte, error) {
	return toml.Marshal(c)
}
