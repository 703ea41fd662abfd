package cli

import (
	"encoding/json"
	"fmt"
	"io"
)

// listWriter streams a JSON array one item at a time.
type listWriter struct {
	w     io.Writer
	json  bool
	count int
}

func newListWriter(w io.Writer, asJSON bool) *listWriter { return &listWriter{w: w, json: asJSON} }

func (l *listWriter) item(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	sep := ",\n"
	if l.count == 0 {
		sep = "[\n"
	}
	l.count++
	_, err = fmt.Fprintf(l.w, "%s%s", sep, b)
	return err
}

func (l *listWriter) close() error {
	if !l.json {
		return nil
	}
	if l.count == 0 {
		_, err := fmt.Fprintln(l.w, "[]")
		return err
	}
	_, err := fmt.Fprintln(l.w, "\n]")
	return err
}

// abort ends the output after an error so what was printed stays readable.
func (l *listWriter) abort() {
	if l.json && l.count > 0 {
		fmt.Fprintln(l.w, "\n]")
	}
}
