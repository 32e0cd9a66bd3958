//! `RangeSet`: a set of `u64` (versions or seqs) kept as ascending, disjoint,
//! non-adjacent inclusive spans. Bookkeeping is mostly long runs of applied
//! versions, so spans keep it small where a set of numbers would not.

use std::collections::BTreeMap;

use patina_wire::Span;

/// A set of `u64` as ascending, disjoint, non-adjacent inclusive spans.
///
/// Invariant: for consecutive entries `(s1, e1)`, `(s2, e2)`: `s1 <= e1`
/// and `e1 + 1 < s2`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start -> end (inclusive).
    spans: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    /// Builds a set from spans that may overlap, touch or come in any order.
    /// Spans with `start > end` (malformed, e.g. from a peer) are skipped.
    pub fn from_spans(spans: impl IntoIterator<Item = Span>) -> RangeSet {
        let mut set = RangeSet::new();
        for span in spans {
            if span.start <= span.end {
                set.insert(span);
            }
        }
        set
    }

    /// Adds every number of `span`, merging with overlapping and adjacent
    /// spans.
    pub fn insert(&mut self, span: Span) {
        debug_assert!(span.start <= span.end, "span {span:?}");
        let (mut start, mut end) = (span.start, span.end);
        if let Some((&s, &e)) = self.spans.range(..start).next_back() {
            if e.saturating_add(1) >= start {
                if e >= end {
                    return;
                }
                start = s;
            }
        }
        let touching: Vec<(u64, u64)> = self
            .spans
            .range(start..=end.saturating_add(1))
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.spans.remove(&s);
            end = end.max(e);
        }
        self.spans.insert(start, end);
        self.debug_check();
    }

    pub fn insert_one(&mut self, n: u64) {
        self.insert(Span::new(n, n));
    }

    pub fn contains(&self, n: u64) -> bool {
        self.spans
            .range(..=n)
            .next_back()
            .is_some_and(|(_, &e)| e >= n)
    }

    /// Is every number of `span` in the set?
    pub fn contains_span(&self, span: Span) -> bool {
        self.spans
            .range(..=span.start)
            .next_back()
            .is_some_and(|(_, &e)| e >= span.end)
    }

    /// Does the set hold any number of `span`?
    pub fn overlaps(&self, span: Span) -> bool {
        self.spans
            .range(..=span.end)
            .next_back()
            .is_some_and(|(_, &e)| e >= span.start)
    }

    /// The spans, ascending.
    pub fn iter(&self) -> impl Iterator<Item = Span> + '_ {
        self.spans.iter().map(|(&s, &e)| Span::new(s, e))
    }

    /// The spans of the set that share a number with `span`, ascending, not
    /// clipped to it.
    pub fn overlapping(&self, span: Span) -> impl Iterator<Item = Span> + '_ {
        let before = self
            .spans
            .range(..span.start)
            .next_back()
            .filter(|(_, &e)| e >= span.start);
        before
            .into_iter()
            .chain(self.spans.range(span.start..=span.end))
            .map(|(&s, &e)| Span::new(s, e))
    }

    /// The numbers in `self` and not in `other`.
    pub fn difference(&self, other: &RangeSet) -> RangeSet {
        let mut out = RangeSet::new();
        for span in self.iter() {
            out.push_difference(span, other);
        }
        out
    }

    /// Appends `span` minus `other`; `span` lies after everything in `self`.
    fn push_difference(&mut self, span: Span, other: &RangeSet) {
        // `None` once `other` covers through u64::MAX.
        let mut cursor = Some(span.start);
        for o in other.overlapping(span) {
            let Some(c) = cursor else { break };
            if o.start > c {
                self.insert(Span::new(c, o.start - 1));
            }
            cursor = o.end.checked_add(1);
        }
        if let Some(c) = cursor.filter(|&c| c <= span.end) {
            self.insert(Span::new(c, span.end));
        }
    }

    /// The numbers in both sets.
    pub fn intersection(&self, other: &RangeSet) -> RangeSet {
        self.difference(&self.difference(other))
    }

    /// The numbers of `within` that are not in the set.
    pub fn gaps_in(&self, within: Span) -> RangeSet {
        let mut out = RangeSet::new();
        out.push_difference(within, self);
        out
    }

    /// The numbers of `1..=max` that are not in the set (versions start at 1).
    pub fn gaps(&self, max: u64) -> RangeSet {
        if max == 0 {
            return RangeSet::new();
        }
        self.gaps_in(Span::new(1, max))
    }

    /// How many numbers the set holds (saturating at u64::MAX).
    pub fn len(&self) -> u64 {
        self.iter().fold(0u64, |n, s| {
            n.saturating_add((s.end - s.start).saturating_add(1))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// How many spans the set is made of.
    pub fn span_count(&self) -> usize {
        self.spans.len()
    }

    pub fn max(&self) -> Option<u64> {
        self.spans.last_key_value().map(|(_, &e)| e)
    }

    pub fn min(&self) -> Option<u64> {
        self.spans.first_key_value().map(|(&s, _)| s)
    }

    fn debug_check(&self) {
        if cfg!(debug_assertions) {
            let mut prev: Option<u64> = None;
            for (&s, &e) in &self.spans {
                assert!(s <= e, "span {s}..={e} reversed");
                if let Some(p) = prev {
                    assert!(p.saturating_add(1) < s, "spans touch at {p}/{s}");
                }
                prev = Some(e);
            }
        }
    }
}

/// Cuts `span` into consecutive pieces of at most `len_max` numbers
/// (`len_max` 0 counts as 1).
pub fn pieces(span: Span, len_max: u64) -> impl Iterator<Item = Span> {
    let step = len_max.max(1) - 1;
    let mut next = Some(span.start);
    std::iter::from_fn(move || {
        let start = next?;
        let end = start.saturating_add(step).min(span.end);
        next = end.checked_add(1).filter(|&n| n <= span.end);
        Some(Span::new(start, end))
    })
}

impl FromIterator<Span> for RangeSet {
    fn from_iter<I: IntoIterator<Item = Span>>(iter: I) -> RangeSet {
        RangeSet::from_spans(iter)
    }
}

impl From<Span> for RangeSet {
    fn from(span: Span) -> RangeSet {
        RangeSet::from_spans([span])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// Numbers the properties look at: every span generated lies below.
    const UNIVERSE: u64 = 80;

    fn span() -> impl Strategy<Value = Span> {
        (0..UNIVERSE - 8, 0..8u64).prop_map(|(s, len)| Span::new(s, s + len))
    }

    fn spans() -> impl Strategy<Value = Vec<Span>> {
        prop::collection::vec(span(), 0..12)
    }

    fn model(spans: &[Span]) -> BTreeSet<u64> {
        spans.iter().flat_map(|s| s.start..=s.end).collect()
    }

    fn numbers(set: &RangeSet) -> BTreeSet<u64> {
        set.iter().flat_map(|s| s.start..=s.end).collect()
    }

    fn assert_canonical(set: &RangeSet) {
        let spans: Vec<Span> = set.iter().collect();
        for w in spans.windows(2) {
            assert!(w[0].end + 1 < w[1].start, "{spans:?}");
        }
    }

    proptest! {
        #[test]
        fn insert_matches_model(input in spans()) {
            let set = RangeSet::from_spans(input.clone());
            let model = model(&input);
            assert_canonical(&set);
            prop_assert_eq!(numbers(&set), model.clone());
            prop_assert_eq!(set.len(), model.len() as u64);
            prop_assert_eq!(set.max(), model.last().copied());
            prop_assert_eq!(set.min(), model.first().copied());
            for n in 0..UNIVERSE + 2 {
                prop_assert_eq!(set.contains(n), model.contains(&n), "n = {}", n);
            }
        }

        #[test]
        fn spans_queries_match_model(input in spans(), probe in span()) {
            let set = RangeSet::from_spans(input.clone());
            let model = model(&input);
            let all = (probe.start..=probe.end).all(|n| model.contains(&n));
            let any = (probe.start..=probe.end).any(|n| model.contains(&n));
            prop_assert_eq!(set.contains_span(probe), all);
            prop_assert_eq!(set.overlaps(probe), any);
            let touched: BTreeSet<u64> = set.overlapping(probe)
                .flat_map(|s| s.start..=s.end)
                .filter(|n| probe.contains(*n))
                .collect();
            let expected: BTreeSet<u64> = (probe.start..=probe.end)
                .filter(|n| model.contains(n))
                .collect();
            prop_assert_eq!(touched, expected);
        }

        #[test]
        fn difference_and_intersection_match_model(a in spans(), b in spans()) {
            let (sa, sb) = (RangeSet::from_spans(a.clone()), RangeSet::from_spans(b.clone()));
            let (ma, mb) = (model(&a), model(&b));
            let diff = sa.difference(&sb);
            let inter = sa.intersection(&sb);
            assert_canonical(&diff);
            assert_canonical(&inter);
            prop_assert_eq!(numbers(&diff), ma.difference(&mb).copied().collect::<BTreeSet<_>>());
            prop_assert_eq!(numbers(&inter), ma.intersection(&mb).copied().collect::<BTreeSet<_>>());
        }

        #[test]
        fn gaps_match_model(input in spans(), max in 0..UNIVERSE + 4) {
            let set = RangeSet::from_spans(input.clone());
            let model = model(&input);
            let expected: BTreeSet<u64> = (1..=max).filter(|n| !model.contains(n)).collect();
            prop_assert_eq!(numbers(&set.gaps(max)), expected);
        }

        #[test]
        fn insert_is_commutative_and_idempotent(a in spans()) {
            let forward = RangeSet::from_spans(a.clone());
            let backward = RangeSet::from_spans(a.iter().rev().copied());
            let twice = RangeSet::from_spans(a.iter().chain(a.iter()).copied());
            prop_assert_eq!(&forward, &backward);
            prop_assert_eq!(&forward, &twice);
        }
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut set = RangeSet::new();
        set.insert(Span::new(u64::MAX - 1, u64::MAX));
        set.insert(Span::new(0, 3));
        set.insert(Span::new(4, 4));
        assert_eq!(set.iter().collect::<Vec<_>>().len(), 2);
        assert!(set.contains(u64::MAX));
        let all = RangeSet::from(Span::new(0, u64::MAX));
        assert_eq!(all.len(), u64::MAX);
        assert!(all.difference(&all).is_empty());
        let gaps = set.gaps_in(Span::new(0, u64::MAX));
        assert_eq!(
            gaps.iter().collect::<Vec<_>>(),
            vec![Span::new(5, u64::MAX - 2)]
        );
    }

    #[test]
    fn pieces_tile_the_span() {
        let cut: Vec<Span> = pieces(Span::new(3, 10), 3).collect();
        assert_eq!(
            cut,
            vec![Span::new(3, 5), Span::new(6, 8), Span::new(9, 10)]
        );
        let top: Vec<Span> = pieces(Span::new(u64::MAX - 1, u64::MAX), 0).collect();
        assert_eq!(top.len(), 2);
    }

    #[test]
    fn malformed_spans_are_skipped() {
        let set = RangeSet::from_spans([Span { start: 5, end: 2 }, Span::new(7, 9)]);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![Span::new(7, 9)]);
    }
}
