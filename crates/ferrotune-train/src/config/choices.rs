//! The training keys whose value is one of a fixed set of names, read into enums when the
//! config is read: a misspelt value fails there, naming the key, the value and the
//! accepted names, before any data or model is loaded.

use ferrotune_data::unknown_choice;
use serde::{Deserialize, Deserializer, Serializer};

use crate::schedule::ScheduleKind;

/// A config key whose value is one of a fixed set of names.
pub trait Choice: Copy + PartialEq + 'static {
    /// The config key, for the error message.
    const KEY: &'static str;
    /// Every value, in the order the error message lists them.
    const ALL: &'static [Self];

    /// The name a config spells this value with; train_config.json writes it back the same.
    fn name(self) -> &'static str;

    /// The value called `name`; any other name is an error naming the key, the name and
    /// the accepted names.
    fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.name() == name)
            .ok_or_else(|| {
                let accepted: Vec<&str> = Self::ALL.iter().map(|c| c.name()).collect();
                unknown_choice(Self::KEY, name, &accepted)
            })
    }
}

/// `finetuning_type`: what trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinetuningType {
    /// Every weight.
    Full,
    /// LoRA adapters beside frozen weights (LLaMA-Factory's default).
    Lora,
    /// The last (or first) `freeze_trainable_layers` decoder layers.
    Freeze,
}

impl Choice for FinetuningType {
    const KEY: &'static str = "finetuning_type";
    const ALL: &'static [Self] = &[Self::Full, Self::Lora, Self::Freeze];

    fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Lora => "lora",
            Self::Freeze => "freeze",
        }
    }
}

/// `pref_loss`: the preference loss of `stage: dpo`, with LLaMA-Factory's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefLossChoice {
    Sigmoid,
    Hinge,
    Ipo,
    Orpo,
    Simpo,
}

impl Choice for PrefLossChoice {
    const KEY: &'static str = "pref_loss";
    const ALL: &'static [Self] = &[
        Self::Sigmoid,
        Self::Hinge,
        Self::Ipo,
        Self::Orpo,
        Self::Simpo,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Sigmoid => "sigmoid",
            Self::Hinge => "hinge",
            Self::Ipo => "ipo",
            Self::Orpo => "orpo",
            Self::Simpo => "simpo",
        }
    }
}

impl PrefLossChoice {
    pub fn loss(self) -> ferrotune_model::ops::preference::PrefLoss {
        use ferrotune_model::ops::preference::PrefLoss;
        match self {
            Self::Sigmoid => PrefLoss::Sigmoid,
            Self::Hinge => PrefLoss::Hinge,
            Self::Ipo => PrefLoss::Ipo,
            Self::Orpo => PrefLoss::Orpo,
            Self::Simpo => PrefLoss::Simpo,
        }
    }
}

/// `lr_scheduler_type`, with transformers' names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrSchedulerType {
    Constant,
    /// transformers' name for a constant rate after the warmup; the same schedule here,
    /// where every schedule warms up as `warmup_steps` / `warmup_ratio` say.
    ConstantWithWarmup,
    Linear,
    Cosine,
    CosineWithMinLr,
}

impl Choice for LrSchedulerType {
    const KEY: &'static str = "lr_scheduler_type";
    const ALL: &'static [Self] = &[
        Self::Constant,
        Self::ConstantWithWarmup,
        Self::Linear,
        Self::Cosine,
        Self::CosineWithMinLr,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::ConstantWithWarmup => "constant_with_warmup",
            Self::Linear => "linear",
            Self::Cosine => "cosine",
            Self::CosineWithMinLr => "cosine_with_min_lr",
        }
    }
}

impl LrSchedulerType {
    /// The schedule's shape; `cosine_with_min_lr` decays to a tenth of the base rate, as
    /// LLaMA-Factory's default `min_lr_rate`.
    pub fn kind(self) -> ScheduleKind {
        match self {
            Self::Constant | Self::ConstantWithWarmup => ScheduleKind::Constant,
            Self::Linear => ScheduleKind::Linear,
            Self::Cosine => ScheduleKind::Cosine,
            Self::CosineWithMinLr => ScheduleKind::CosineWithMinLr { min_lr_rate: 0.1 },
        }
    }
}

/// A strategy key (when something happens): transformers' `no`, `steps` and `epoch`.
macro_rules! strategy {
    ($(#[$doc:meta])* $name:ident, $key:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            No,
            /// Every `*_steps` optimizer steps.
            Steps,
            /// At the end of every epoch.
            Epoch,
        }

        impl Choice for $name {
            const KEY: &'static str = $key;
            const ALL: &'static [Self] = &[Self::No, Self::Steps, Self::Epoch];

            fn name(self) -> &'static str {
                match self {
                    Self::No => "no",
                    Self::Steps => "steps",
                    Self::Epoch => "epoch",
                }
            }
        }
    };
}

strategy!(
    /// `save_strategy`: when checkpoints are written.
    SaveStrategy,
    "save_strategy"
);
strategy!(
    /// `eval_strategy`: when the held-out loss is measured (it always is before the first
    /// step and after the last, when there is held-out data).
    EvalStrategy,
    "eval_strategy"
);

/// Reads a choice from its name (serde's `deserialize_with`).
pub(crate) fn read<'de, D: Deserializer<'de>, C: Choice>(d: D) -> Result<C, D::Error> {
    let name = String::deserialize(d)?;
    C::parse(&name).map_err(serde::de::Error::custom)
}

/// Reads a save or eval strategy. An unquoted `no` is the boolean false to YAML 1.1
/// readers (PyYAML, and `key=no` on our command line), so false is read as "no".
pub(crate) fn read_strategy<'de, D: Deserializer<'de>, C: Choice>(d: D) -> Result<C, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Strategy {
        Name(String),
        Flag(bool),
    }
    match Strategy::deserialize(d)? {
        Strategy::Name(name) => C::parse(&name).map_err(serde::de::Error::custom),
        Strategy::Flag(false) => C::parse("no").map_err(serde::de::Error::custom),
        Strategy::Flag(true) => Err(serde::de::Error::custom(
            "a strategy is `no`, `steps` or `epoch`, not true",
        )),
    }
}

/// Writes a choice as its name (serde's `serialize_with`).
pub(crate) fn write<S: Serializer, C: Choice>(choice: &C, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(choice.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_name_reads_back_as_itself<C: Choice + std::fmt::Debug>() {
        for &c in C::ALL {
            assert_eq!(C::parse(c.name()), Ok(c), "{}", C::KEY);
        }
    }

    #[test]
    fn every_accepted_name_reads_and_writes_back_the_same() {
        every_name_reads_back_as_itself::<FinetuningType>();
        every_name_reads_back_as_itself::<LrSchedulerType>();
        every_name_reads_back_as_itself::<SaveStrategy>();
        every_name_reads_back_as_itself::<EvalStrategy>();
    }

    #[test]
    fn a_misspelt_name_is_an_error_naming_key_value_and_choices() {
        assert_eq!(
            FinetuningType::parse("loar").unwrap_err(),
            "`finetuning_type`: unknown value \"loar\" (did you mean `lora`?); accepted values: full, lora, freeze"
        );
        assert_eq!(
            LrSchedulerType::parse("cosine_with_restarts").unwrap_err(),
            "`lr_scheduler_type`: unknown value \"cosine_with_restarts\" (did you mean `cosine_with_min_lr`?); \
             accepted values: constant, constant_with_warmup, linear, cosine, cosine_with_min_lr"
        );
        assert_eq!(
            SaveStrategy::parse("best").unwrap_err(),
            "`save_strategy`: unknown value \"best\"; accepted values: no, steps, epoch"
        );
    }

    #[test]
    fn the_warmup_spelling_of_constant_is_the_constant_schedule() {
        assert_eq!(
            LrSchedulerType::ConstantWithWarmup.kind(),
            LrSchedulerType::Constant.kind()
        );
    }
}
