package dps

import "testing"

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://alice:s3cret@proxy:3128": "http://alice:xxxxx@proxy:3128",
		"alice:s3cret@proxy:3128":        "alice:xxxxx@proxy:3128",
		"http://proxy:3128":              "http://proxy:3128",
		"http://alice@proxy:3128":        "http://alice@proxy:3128",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
