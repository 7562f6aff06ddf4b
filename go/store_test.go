package switchboard_test

import (
	"errors"
	"fmt"
	"testing"

	switchboard "example.org/switchboard/go"
)

func TestPutGetDeleteScan(t *testing.T) {
	db := openDB(t)
	// More keys than one page of a scan, plus a neighbour outside the prefix.
	const n = 600
	for i := 0; i < n; i++ {
		must(t, db.Put(fmt.Sprintf("notes/a/%04d", i), []byte(fmt.Sprintf(`{"i":%d}`, i))))
	}
	must(t, db.Put("notes/b", []byte(`"other"`)))
	it := db.Scan("notes/a/")
	i := 0
	for it.Next() {
		if want := fmt.Sprintf("notes/a/%04d", i); it.Key() != want || string(it.Value()) != fmt.Sprintf(`{"i":%d}`, i) {
			t.Fatalf("entry %d is %s=%s", i, it.Key(), it.Value())
		}
		i++
	}
	must(t, it.Err())
	if i != n {
		t.Fatalf("scanned %d of %d", i, n)
	}
	v, found, err := db.Get("notes/b")
	if err != nil || !found || string(v) != `"other"` {
		t.Fatalf("get: %s %v %v", v, found, err)
	}
	must(t, db.Delete("notes/b"))
	if _, found, err := db.Get("notes/b"); found || err != nil {
		t.Fatalf("after delete: %v %v", found, err)
	}
	if it := db.Scan("nothing/"); it.Next() || it.Err() != nil {
		t.Fatalf("an empty scan: %v", it.Err())
	}
	if it := db.Scan("notes/\xff"); it.Next() || !errors.Is(it.Err(), switchboard.ErrInvalidInput) {
		t.Fatalf("a prefix that is not UTF-8: %v", it.Err())
	}
	if v := switchboard.Version(); v != "0.1.0" {
		t.Fatalf("the library's version is %q", v)
	}
}
