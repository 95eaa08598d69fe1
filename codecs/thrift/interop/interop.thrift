// IDL for the thrift codec's interop tests. Python code is generated from it at install
// time by scripts/interop/thrift.sh (never committed).
namespace py interop

enum Kind { SMALL = 1, LARGE = 2 }

struct Leaf {
  1: i32 id,
  2: string label,
  3: binary blob,
  4: double weight,
  5: bool flag,
  6: i64 big,
  7: i16 small,
  8: i8 tiny,
}

struct Node {
  1: string name,
  2: list<Leaf> leaves,
  3: map<string, Leaf> byName,
  4: set<i64> tags,
  5: optional Node child,
  6: Kind kind,
  7: list<list<map<i32, bool>>> nested,
}

exception NotFound {
  1: string what,
  2: i32 code,
}

service Store {
  // Echoes the node with `name` suffixed by "!", or throws NotFound when name == "missing".
  Node put(1: Node node, 2: i32 copies) throws (1: NotFound nf),
  // Fire and forget: the server records the last note; `lastNote` reads it back.
  oneway void note(1: string text),
  string lastNote(),
  // Raises an undeclared error in the handler: the server answers INTERNAL_ERROR.
  void boom(),
}

service Calc {
  i64 add(1: i64 a, 2: i64 b),
}
