// Intrusive doubly-linked lists over dense indices, for the eviction policies.
//
// Nodes are numbered [0, num_nodes); each node is in at most one list at a time. Every list has
// a sentinel node numbered num_nodes + list, so an empty list's Front/Back is its sentinel and
// walks stop at End(list). Links live in one array of {prev, next} pairs, so moving a node touches
// one 8-byte record and its two neighbours: O(1), no allocation, no hashing.
//
// Internal to memory/. Thread-safety: none.
#pragma once

#include <cstdint>
#include <vector>

namespace moe::internal {

class IndexLists {
 public:
  static constexpr uint32_t kDetached = 0xFFFFFFFFu;

  IndexLists(uint32_t num_nodes, uint32_t num_lists)
      : num_nodes_(num_nodes), links_(size_t{num_nodes} + num_lists) {
    for (uint32_t i = 0; i < num_nodes; ++i) links_[i] = {kDetached, kDetached};
    for (uint32_t l = 0; l < num_lists; ++l) {
      const uint32_t s = num_nodes + l;
      links_[s] = {s, s};
    }
  }

  uint32_t End(uint32_t list) const { return num_nodes_ + list; }
  bool Empty(uint32_t list) const { return links_[End(list)].next == End(list); }
  uint32_t Front(uint32_t list) const { return links_[End(list)].next; }
  uint32_t Back(uint32_t list) const { return links_[End(list)].prev; }
  uint32_t Next(uint32_t node) const { return links_[node].next; }
  uint32_t Prev(uint32_t node) const { return links_[node].prev; }
  bool Linked(uint32_t node) const { return links_[node].next != kDetached; }

  void PushFront(uint32_t list, uint32_t node) { InsertAfter(End(list), node); }
  void PushBack(uint32_t list, uint32_t node) { InsertAfter(links_[End(list)].prev, node); }
  // Inserts a detached `node` right after `pos` (a node or a sentinel).
  void InsertAfter(uint32_t pos, uint32_t node) {
    const uint32_t next = links_[pos].next;
    links_[node] = {pos, next};
    links_[next].prev = node;
    links_[pos].next = node;
  }
  void Remove(uint32_t node) {
    const Link l = links_[node];
    links_[l.prev].next = l.next;
    links_[l.next].prev = l.prev;
    links_[node] = {kDetached, kDetached};
  }
  // Moves a linked `node` to the front of `list` (which may be its own list).
  void MoveToFront(uint32_t list, uint32_t node) {
    const Link l = links_[node];
    links_[l.prev].next = l.next;
    links_[l.next].prev = l.prev;
    InsertAfter(End(list), node);
  }

  struct Link {
    uint32_t prev;
    uint32_t next;
  };
  // The list operations of a hot loop over raw pointers: the loop keeps them in registers
  // (through the vector, every store makes the compiler reload its data pointer). Valid while
  // the IndexLists lives; use no other access to it meanwhile.
  struct Raw {
    Link* links;
    uint32_t num_nodes;
    void Remove(uint32_t node) const {
      const Link l = links[node];
      links[l.prev].next = l.next;
      links[l.next].prev = l.prev;
      links[node] = {kDetached, kDetached};
    }
    void PushFront(uint32_t list, uint32_t node) const {
      const uint32_t head = num_nodes + list;
      const uint32_t next = links[head].next;
      links[node] = {head, next};
      links[next].prev = node;
      links[head].next = node;
    }
    void MoveToFront(uint32_t list, uint32_t node) const {
      const Link l = links[node];
      links[l.prev].next = l.next;
      links[l.next].prev = l.prev;
      const uint32_t head = num_nodes + list;
      const uint32_t next = links[head].next;
      links[node] = {head, next};
      links[next].prev = node;
      links[head].next = node;
    }
  };
  Raw raw() { return {links_.data(), num_nodes_}; }

 private:
  uint32_t num_nodes_;
  std::vector<Link> links_;
};

}  // namespace moe::internal
