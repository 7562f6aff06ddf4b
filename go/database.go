package switchboard

/*
#include "switchboard.h"
*/
import "C"

import (
	"encoding/binary"
	"encoding/json"
	"sync"
)

// Database is an open store. Every write passes the database's policy
// hooks. It is safe for concurrent use.
type Database struct {
	mu       sync.RWMutex
	ptr      *C.SbDatabase
	path     string
	children map[child]struct{}
}

// A dispatcher or policy engine made from a database, closed with it.
type child interface {
	close()
}

// Open opens (creating if needed) the store at path.
func Open(path string) (*Database, error) {
	p, n := cstr(path)
	var ptr *C.SbDatabase
	var errb C.SbBytes
	if err := check(C.sb_database_open(p, n, &ptr, &errb), errb); err != nil {
		return nil, err
	}
	return &Database{ptr: ptr, path: path, children: map[child]struct{}{}}, nil
}

// Path is where the store lives.
func (db *Database) Path() string {
	return db.path
}

// Close closes the store, and with it every dispatcher and policy engine
// made from it: their local agents and hooks are released. RocksDB closes
// once calls still in flight have finished. Closing twice is a no-op.
func (db *Database) Close() error {
	// The children close first, without holding db.mu: a call of theirs in
	// flight may run a hook that reads or writes this database.
	db.mu.Lock()
	children := db.children
	db.children = nil
	db.mu.Unlock()
	for c := range children {
		c.close()
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.ptr != nil {
		C.sb_database_free(db.ptr)
		db.ptr = nil
	}
	return nil
}

func errClosed() error {
	return invalid("this database has been closed")
}

// adopt ties c's life to the database's; false if it is closed or closing.
func (db *Database) adopt(c child) bool {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.ptr == nil || db.children == nil {
		return false
	}
	db.children[c] = struct{}{}
	return true
}

func (db *Database) forget(c child) {
	db.mu.Lock()
	defer db.mu.Unlock()
	delete(db.children, c)
}

// StoreOption changes one read or write.
type StoreOption func(*storeOptions)

type storeOptions struct {
	context []byte
}

// WithPolicyContext hands ctx to the policy hooks that judge the
// operation (as their context argument).
func WithPolicyContext(ctx map[string]string) StoreOption {
	return func(o *storeOptions) {
		o.context, _ = json.Marshal(ctx) // a map of strings always marshals
	}
}

func storeOpts(opts []StoreOption) storeOptions {
	var o storeOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Put writes value at key through the write hooks.
func (db *Database) Put(key string, value []byte, opts ...StoreOption) error {
	o := storeOpts(opts)
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.ptr == nil {
		return errClosed()
	}
	k, kn := cstr(key)
	v, vn := cbytes(value)
	c, cn := cbytes(o.context)
	var errb C.SbBytes
	return check(C.sb_database_put(db.ptr, k, kn, v, vn, c, cn, &errb), errb)
}

// Get reads key through the read hooks; found is false if it is absent.
func (db *Database) Get(key string, opts ...StoreOption) (value []byte, found bool, err error) {
	o := storeOpts(opts)
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.ptr == nil {
		return nil, false, errClosed()
	}
	k, kn := cstr(key)
	c, cn := cbytes(o.context)
	var out, errb C.SbBytes
	var ok C.bool
	if err := check(C.sb_database_get(db.ptr, k, kn, c, cn, &out, &ok, &errb), errb); err != nil {
		return nil, false, err
	}
	value = takeBytes(out)
	if bool(ok) && value == nil {
		value = []byte{}
	}
	return value, bool(ok), nil
}

// Delete deletes key through the delete hooks (a missing key is no error).
func (db *Database) Delete(key string, opts ...StoreOption) error {
	o := storeOpts(opts)
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.ptr == nil {
		return errClosed()
	}
	k, kn := cstr(key)
	c, cn := cbytes(o.context)
	var errb C.SbBytes
	return check(C.sb_database_delete(db.ptr, k, kn, c, cn, &errb), errb)
}

// scanPage is how many keys a scan reads per trip into the library.
const scanPage = 256

// Scan iterates over every key under prefix in key order, through the
// read hooks, reading a page of keys at a time:
//
//	it := db.Scan("tools/code/code_exec/")
//	for it.Next() { _ = it.Key(); _ = it.Value() }
//	err = it.Err()
func (db *Database) Scan(prefix string, opts ...StoreOption) *Iterator {
	return &Iterator{db: db, prefix: prefix, context: storeOpts(opts).context}
}

// Iterator walks a scan; it is not safe for concurrent use.
type Iterator struct {
	db       *Database
	prefix   string
	context  []byte
	after    string
	hasAfter bool
	page     []byte
	left     int
	done     bool
	key      string
	value    []byte
	err      error
}

// Next moves to the next entry; false at the end or on an error (Err).
func (it *Iterator) Next() bool {
	if it.err != nil {
		return false
	}
	if it.left == 0 {
		if it.done || !it.fetch() {
			return false
		}
		if it.left == 0 {
			return false
		}
	}
	it.key = string(field(&it.page))
	it.value = field(&it.page)
	it.left--
	it.after, it.hasAfter = it.key, true
	return true
}

// field takes one length-prefixed field off the front of *page.
func field(page *[]byte) []byte {
	n := binary.LittleEndian.Uint32(*page)
	f := (*page)[4 : 4+n : 4+n]
	*page = (*page)[4+n:]
	return f
}

func (it *Iterator) fetch() bool {
	db := it.db
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.ptr == nil {
		it.err = errClosed()
		return false
	}
	p, pn := cstr(it.prefix)
	a, an := cstr(it.after)
	c, cn := cbytes(it.context)
	var page, errb C.SbBytes
	var count C.uint32_t
	status := C.sb_database_scan_page(db.ptr, p, pn, a, an, C.bool(it.hasAfter), scanPage, c, cn, &page, &count, &errb)
	if it.err = check(status, errb); it.err != nil {
		return false
	}
	it.page = takeBytes(page)
	it.left = int(count)
	it.done = it.left < scanPage
	return true
}

// Key is the current entry's key.
func (it *Iterator) Key() string { return it.key }

// Value is the current entry's value; the iterator never reuses it.
func (it *Iterator) Value() []byte { return it.value }

// Err is the error that stopped the scan, if any.
func (it *Iterator) Err() error { return it.err }
