//! The device status register's transitions (virtio 1.2, 2.1 and 3.1.1),
//! as one pure function the transport applies: what a driver's write does
//! to the status, and whether it starts the device.

use super::spec::{STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET};

/// What a status write does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// A write of 0: the device resets.
    Reset,
    /// The write would clear these bits. The driver clears status bits
    /// only by writing 0 (2.1.2), so the write is ignored: the workers
    /// keep the rings they were given, so the queue registers must stay
    /// locked too (the fuzzer saw them unlocked under running workers).
    Ignore { cleared: u8 },
    /// The status becomes `status`.
    Set {
        status: u8,
        /// FEATURES_OK rose: whether it was kept or refused.
        features: Option<FeaturesOk>,
        /// DRIVER_OK rose: the device starts.
        activate: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeaturesOk {
    Accepted,
    /// The driver asked for features not offered, or not for VERSION_1:
    /// FEATURES_OK does not stick, which is how the driver learns it.
    Refused,
}

/// The transition from `old` on a write of `written`; `acceptable` says
/// whether the driver's features may be accepted (asked when FEATURES_OK
/// rises). NEEDS_RESET is the device's to set and stays until a reset.
pub fn next(old: u8, written: u8, acceptable: impl FnOnce() -> bool) -> Transition {
    if written == 0 {
        return Transition::Reset;
    }
    let cleared = old & !written & !STATUS_NEEDS_RESET;
    if cleared != 0 {
        return Transition::Ignore { cleared };
    }
    let mut status = written | (old & STATUS_NEEDS_RESET);
    let rises = |bit: u8, status: u8| status & bit != 0 && old & bit == 0;
    let features = rises(STATUS_FEATURES_OK, status).then(|| {
        if acceptable() {
            FeaturesOk::Accepted
        } else {
            FeaturesOk::Refused
        }
    });
    if features == Some(FeaturesOk::Refused) {
        status &= !STATUS_FEATURES_OK;
    }
    Transition::Set {
        status,
        features,
        activate: rises(STATUS_DRIVER_OK, status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (old, written) pair, with features acceptable and not.
    fn all() -> impl Iterator<Item = (u8, u8, bool, Transition)> {
        (0..=255u8).flat_map(|old| {
            (0..=255u8).flat_map(move |written| {
                [true, false]
                    .into_iter()
                    .map(move |ok| (old, written, ok, next(old, written, || ok)))
            })
        })
    }

    #[test]
    fn only_a_write_of_zero_resets() {
        for (_, written, _, t) in all() {
            assert_eq!(t == Transition::Reset, written == 0, "{written:#x}");
        }
    }

    #[test]
    fn no_write_clears_a_bit() {
        for (old, written, _, t) in all() {
            match t {
                Transition::Reset => {}
                Transition::Ignore { cleared } => {
                    assert_ne!(cleared, 0);
                    assert_eq!(cleared & written, 0);
                    assert_eq!(cleared & !old, 0);
                }
                Transition::Set { status, .. } => {
                    // Everything old had is kept (NEEDS_RESET included),
                    // but for a FEATURES_OK refused on this very write.
                    assert_eq!(old & !status, 0, "{old:#x} -> {status:#x}");
                }
            }
        }
    }

    #[test]
    fn needs_reset_is_the_device_s() {
        for (old, written, _, t) in all() {
            if let Transition::Set { status, .. } = t {
                assert_eq!(
                    status & STATUS_NEEDS_RESET != 0,
                    (old | written) & STATUS_NEEDS_RESET != 0,
                    "{old:#x} + {written:#x}"
                );
            }
        }
    }

    #[test]
    fn features_ok_sticks_only_when_acceptable() {
        for (old, written, ok, t) in all() {
            let Transition::Set {
                status, features, ..
            } = t
            else {
                continue;
            };
            let rose = written & STATUS_FEATURES_OK != 0 && old & STATUS_FEATURES_OK == 0;
            assert_eq!(features.is_some(), rose);
            if rose {
                assert_eq!(status & STATUS_FEATURES_OK != 0, ok);
                assert_eq!(features == Some(FeaturesOk::Accepted), ok);
            }
        }
    }

    #[test]
    fn the_device_starts_once_per_rising_driver_ok() {
        for (old, _, _, t) in all() {
            if let Transition::Set {
                status, activate, ..
            } = t
            {
                assert_eq!(
                    activate,
                    status & STATUS_DRIVER_OK != 0 && old & STATUS_DRIVER_OK == 0
                );
            }
        }
        // A driver's usual sequence: ACK, DRIVER, FEATURES_OK, DRIVER_OK.
        let mut status = 0;
        let mut starts = 0;
        for written in [1, 3, 11, 15, 15] {
            if let Transition::Set {
                status: s,
                activate,
                ..
            } = next(status, written, || true)
            {
                status = s;
                starts += usize::from(activate);
            }
        }
        assert_eq!((status, starts), (15, 1));
    }

    #[test]
    fn acceptability_is_asked_only_when_features_ok_rises() {
        let mut asked = 0;
        for (old, written) in [(0, 1), (1, 3), (3, 11), (11, 15), (15, 15)] {
            let _ = next(old, written, || {
                asked += 1;
                true
            });
        }
        assert_eq!(asked, 1);
    }
}
