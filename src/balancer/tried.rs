//! The set of backends a request has already been sent to, so a retry never repeats one.

/// A small bit set over backend indices. It allocates only once a request is retried.
#[derive(Debug, Default, Clone)]
pub struct Tried {
    words: Vec<u64>,
}

impl Tried {
    pub fn contains(&self, i: usize) -> bool {
        self.words
            .get(i / 64)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    pub fn insert(&mut self, i: usize) {
        let word = i / 64;
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1u64 << (i % 64);
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::Tried;

    #[test]
    fn remembers_indices_across_words() {
        let mut t = Tried::default();
        assert!(t.is_empty());
        for i in [0, 5, 63, 64, 200] {
            assert!(!t.contains(i));
            t.insert(i);
            assert!(t.contains(i));
        }
        assert!(!t.contains(1) && !t.contains(65) && !t.contains(10_000));
        assert!(!t.is_empty());
    }
}
