package dist

import (
	"bytes"
	"encoding"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"

	"devid/agent/config"
)

// ConfigTemplate is /etc/devid/config.toml as packaged: every key of
// agent/config, commented out, with its default and the first sentence of
// its doc comment, read from the package's source under root. A key
// without a doc comment is an error, so a new key cannot ship undocumented.
func ConfigTemplate(root string) ([]byte, error) {
	docs, typeDocs, err := fieldDocs(filepath.Join(root, "agent/config"))
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString(`# /etc/devid/config.toml: devid-agent configuration.
#
# Every key is listed with its default, commented out. Uncomment and edit
# what your board needs (at least dps.id_scope, and dps.endpoint unless
# it is the global Azure one), then check the result:
#
#   devid-agent config check
#
# Reference: docs/config.md (/usr/share/doc/devid-agent/config.md).
# Generated from agent/config by "make dist-gen": do not edit in the tree.
`)
	w := &templateWriter{b: &b, docs: docs, typeDocs: typeDocs}
	if err := w.table("", "Config", reflect.ValueOf(config.Default()).Elem()); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

type templateWriter struct {
	b        *bytes.Buffer
	docs     map[string]map[string]string // type name -> field name -> doc
	typeDocs map[string]string            // type name -> doc
}

var textMarshaler = reflect.TypeFor[encoding.TextMarshaler]()

// table writes the scalar keys of struct v, then one table per struct field.
func (w *templateWriter) table(prefix, typeName string, v reflect.Value) error {
	t := v.Type()
	var tables []int
	for i := range t.NumField() {
		f := t.Field(i)
		key := strings.Split(f.Tag.Get("toml"), ",")[0]
		if key == "" || key == "-" {
			continue
		}
		doc := w.docs[typeName][f.Name]
		if f.Type.Kind() == reflect.Struct && !f.Type.Implements(textMarshaler) {
			doc = w.typeDocs[f.Type.Name()]
		}
		if doc == "" {
			return fmt.Errorf("config: %s.%s (%s%s) has no doc comment; the template needs one", typeName, f.Name, prefix, key)
		}
		fv := v.Field(i)
		switch {
		case f.Type.Kind() == reflect.Struct && !f.Type.Implements(textMarshaler):
			tables = append(tables, i)
			continue
		case f.Type.Kind() == reflect.Map:
			w.comment(f.Name, key, doc)
			fmt.Fprintf(w.b, "#[%s%s]\n#\"host.example.net\" = \"192.0.2.10:8883\"\n", prefix, key)
			continue
		}
		val, err := tomlValue(fv)
		if err != nil {
			return fmt.Errorf("config: %s%s: %w", prefix, key, err)
		}
		w.comment(f.Name, key, doc)
		fmt.Fprintf(w.b, "#%s = %s\n", key, val)
	}
	for _, i := range tables {
		f := t.Field(i)
		key := strings.Split(f.Tag.Get("toml"), ",")[0]
		fmt.Fprintf(w.b, "\n")
		for _, line := range wrap(sentence(f.Type.Name(), "["+prefix+key+"]", w.typeDocs[f.Type.Name()]), 76) {
			fmt.Fprintf(w.b, "# %s\n", line)
		}
		fmt.Fprintf(w.b, "[%s%s]\n", prefix, key)
		if err := w.table(prefix+key+".", f.Type.Name(), v.Field(i)); err != nil {
			return err
		}
	}
	return nil
}

func (w *templateWriter) comment(field, key, doc string) {
	w.b.WriteString("\n")
	for _, line := range wrap(sentence(field, key, doc), 76) {
		fmt.Fprintf(w.b, "# %s\n", line)
	}
}

// fieldDocs reads the doc comment of every struct field in the package's
// source. A comment on a line of several fields ("A, B Duration") counts for
// each of them.
func fieldDocs(dir string) (map[string]map[string]string, map[string]string, error) {
	fset := token.NewFileSet()
	matches, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, nil, err
	}
	docs := map[string]map[string]string{}
	typeDocs := map[string]string{}
	for _, path := range matches {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			return nil, nil, err
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.TYPE || gd.Doc == nil {
				continue
			}
			for _, spec := range gd.Specs {
				typeDocs[spec.(*ast.TypeSpec).Name.Name] = strings.Join(strings.Fields(gd.Doc.Text()), " ")
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok {
				return true
			}
			st, ok := ts.Type.(*ast.StructType)
			if !ok {
				return true
			}
			m := map[string]string{}
			for _, fld := range st.Fields.List {
				text := ""
				if fld.Doc != nil {
					text = strings.Join(strings.Fields(fld.Doc.Text()), " ")
				}
				for _, name := range fld.Names {
					m[name.Name] = text
				}
			}
			docs[ts.Name.Name] = m
			return false
		})
	}
	return docs, typeDocs, nil
}

// sentence is the first sentence of doc with the Go name at its start
// replaced by the TOML key: the one-line meaning of a key.
func sentence(goName, key, doc string) string {
	first := doc
	protected := strings.NewReplacer("e.g.", "e\x00g\x00", "i.e.", "i\x00e\x00").Replace(doc)
	if i := strings.Index(protected, ". "); i >= 0 {
		first = doc[:i+1]
		// "Empty: ..." says what the empty default means; keep it.
		if rest := doc[i+2:]; strings.HasPrefix(rest, "Empty") || strings.HasPrefix(rest, "0 ") {
			if j := strings.Index(rest, ". "); j >= 0 {
				rest = rest[:j+1]
			}
			first += " " + rest
		}
	}
	if rest, ok := strings.CutPrefix(first, goName+" "); ok {
		first = key + " " + rest
	}
	return first
}

// tomlValue writes a default in TOML syntax.
func tomlValue(v reflect.Value) (string, error) {
	if m, ok := v.Interface().(encoding.TextMarshaler); ok {
		b, err := m.MarshalText()
		return strconv.Quote(string(b)), err
	}
	switch v.Kind() {
	case reflect.String:
		return strconv.Quote(v.String()), nil
	case reflect.Bool:
		return strconv.FormatBool(v.Bool()), nil
	case reflect.Int, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(v.Int(), 10), nil
	}
	return "", fmt.Errorf("no template syntax for %s", v.Type())
}

// wrap breaks text into lines of at most width bytes at spaces.
func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		if line != "" && len(line)+1+len(w) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}
