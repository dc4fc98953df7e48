package config

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// durationType is checked before the kind: a Duration is an int64 to Go
// but a string with a unit in the file.
var durationType = reflect.TypeFor[Duration]()

// scan walks the TOML document against Config's fields and reports every
// unknown key and every value of the wrong type, in the file's words
// ("line 4: dps.id_scope: expected a string, got an integer"), so that
// one run of config check names all of them. It returns those problems,
// the paths of the keys at fault (left out when decoding the rest), and
// the line of each key (to prefix validation problems). A syntax error
// stops the walk: nothing after it can be read reliably.
func scan(b []byte) (probs []string, bad [][]string, lines map[string]int, err error) {
	lines = map[string]int{}
	var p unstable.Parser
	p.Reset(b)
	var table []string
	tableOK := true
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			table = keyParts(e.Key())
			line := p.Shape(firstKeyRaw(e.Key())).Start.Line
			t, msg := fieldType(table)
			tableOK = msg == ""
			if !tableOK {
				probs = append(probs, fmt.Sprintf("line %d: %s", line, msg))
				bad = append(bad, table)
				continue
			}
			if k := t.Kind(); k != reflect.Struct && k != reflect.Map || e.Kind == unstable.ArrayTable {
				probs = append(probs, fmt.Sprintf("line %d: %s: expected %s, got a table", line, strings.Join(table, "."), typeName(t)))
				bad = append(bad, table)
				tableOK = false
			}
		case unstable.KeyValue:
			if !tableOK {
				continue // already reported at the table header
			}
			probs, bad = scanKeyValue(&p, e, table, probs, bad, lines)
		}
	}
	if perr := p.Error(); perr != nil {
		// The decoder's error carries the position in a stable form.
		var m map[string]any
		derr := toml.Unmarshal(b, &m)
		if de, ok := derr.(*toml.DecodeError); ok {
			row, col := de.Position()
			return nil, nil, nil, fmt.Errorf("line %d column %d: %s", row, col, de.Error())
		}
		return nil, nil, nil, perr
	}
	return probs, bad, lines, nil
}

func scanKeyValue(p *unstable.Parser, e *unstable.Node, table []string, probs []string, bad [][]string, lines map[string]int) ([]string, [][]string) {
	path := append(append([]string(nil), table...), keyParts(e.Key())...)
	name := strings.Join(path, ".")
	line := p.Shape(firstKeyRaw(e.Key())).Start.Line
	lines[name] = line
	t, msg := fieldType(path)
	if msg != "" {
		return append(probs, fmt.Sprintf("line %d: %s", line, msg)), append(bad, path)
	}
	v := e.Value()
	if v.Kind == unstable.InlineTable && (t.Kind() == reflect.Struct || t.Kind() == reflect.Map) {
		for it := v.Children(); it.Next(); {
			probs, bad = scanKeyValue(p, it.Node(), path, probs, bad, lines)
		}
		return probs, bad
	}
	want := typeName(t)
	if t == durationType {
		want = "a string" // the unit is checked when decoding
	}
	if want != kindName(v) && !(want == "a number" && v.Kind == unstable.Integer) {
		what := fmt.Sprintf("line %d: %s: expected %s, got %s", line, name, typeName(t), kindName(v))
		if t == durationType && (v.Kind == unstable.Integer || v.Kind == unstable.Float) {
			what = fmt.Sprintf("line %d: %s: %s has no unit; write a duration like \"30s\" or \"5m\"", line, name, v.Data)
		}
		return append(probs, what), append(bad, path)
	}
	if t == durationType {
		var d Duration
		if err := d.UnmarshalText(v.Data); err != nil {
			return append(probs, fmt.Sprintf("line %d: %s: %v", line, name, err)), append(bad, path)
		}
	}
	return probs, bad
}

// fieldType finds the Go type a TOML key path decodes into, or says
// why the path is not a key of the config.
func fieldType(path []string) (reflect.Type, string) {
	t := reflect.TypeFor[Config]()
	for i, k := range path {
		switch t.Kind() {
		case reflect.Map:
			t = t.Elem()
			continue
		case reflect.Struct:
			if f, ok := fieldByTag(t, k); ok {
				t = f
				continue
			}
			return nil, fmt.Sprintf("unknown key %q", strings.Join(path[:i+1], "."))
		default:
			return nil, fmt.Sprintf("%s: is %s, not a table", strings.Join(path[:i], "."), typeName(t))
		}
	}
	return t, ""
}

func fieldByTag(t reflect.Type, key string) (reflect.Type, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if name, _, _ := strings.Cut(f.Tag.Get("toml"), ","); name == key {
			return f.Type, true
		}
	}
	return nil, false
}

// typeName says what a field holds, as a config writer would.
func typeName(t reflect.Type) string {
	if t == durationType {
		return "a duration string like \"30s\""
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "an integer"
	case reflect.Float64:
		return "a number"
	case reflect.Map, reflect.Struct:
		return "a table"
	}
	return t.String()
}

// kindName names a TOML value's kind in the same words as typeName.
func kindName(v *unstable.Node) string {
	switch v.Kind {
	case unstable.String:
		return "a string"
	case unstable.Bool:
		return "true or false"
	case unstable.Integer:
		return "an integer"
	case unstable.Float:
		return "a number"
	case unstable.Array:
		return "an array"
	case unstable.InlineTable:
		return "a table"
	case unstable.DateTime, unstable.LocalDate, unstable.LocalTime, unstable.LocalDateTime:
		return "a date/time"
	}
	return v.Kind.String()
}

func keyParts(it unstable.Iterator) []string {
	var parts []string
	for it.Next() {
		parts = append(parts, string(it.Node().Data))
	}
	return parts
}

func firstKeyRaw(it unstable.Iterator) unstable.Range {
	if it.Next() {
		return it.Node().Raw
	}
	return unstable.Range{}
}

// withoutKeys re-encodes the document with the given key paths removed,
// so the keys that are right still decode (and are validated) when
// others are not.
func withoutKeys(b []byte, bad [][]string) ([]byte, error) {
	var m map[string]any
	if err := toml.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	for _, path := range bad {
		cur := m
		for i, k := range path {
			if i == len(path)-1 {
				delete(cur, k)
				break
			}
			next, ok := cur[k].(map[string]any)
			if !ok {
				break
			}
			cur = next
		}
	}
	return toml.Marshal(m)
}
